"""`mta serve`: the registry over HTTP (FastAPI + uvicorn), adapters materialized on demand."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mta.cli import output
from mta.cli.options import MAX_INT, at_most, fits_int64, locations

if TYPE_CHECKING:
    from mta.server.auth import TokenSet


HostOpt = Annotated[str, typer.Option(help="Interface to bind.")]
PortOpt = Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")]
TokensFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--tokens-file",
        help='JSON {"read": [...], "admin": [...]}; adds to MTA_READ_TOKEN/MTA_ADMIN_TOKEN.',
    ),
]
WorkersOpt = Annotated[
    int, typer.Option(min=1, max=64, help="Background threads training stacks (adapt jobs).")
]
MaxQueuedJobsOpt = Annotated[
    int,
    typer.Option(
        min=1, callback=fits_int64, help="Adapt jobs allowed to wait before new ones get 429."
    ),
]
MemoryCacheMbOpt = Annotated[
    int,
    typer.Option(
        min=0,
        callback=at_most(MAX_INT // 1024**2),
        help="In-memory LRU of adapter archives, MiB (0: off).",
    ),
]
LookupThreadsOpt = Annotated[
    int | None,
    typer.Option(
        min=0,
        max=64,
        envvar="MTA_LOOKUP_THREADS",
        help="Threads reading the registry for adapter fetches; 0 reads on the event "
        "loop (default: 1 on SQLite, 4 on PostgreSQL).",
    ),
]
InsecureNoAuthOpt = Annotated[
    bool,
    typer.Option(
        "--insecure-no-auth",
        help="Serve without any token check (only for a trusted loopback setup).",
    ),
]
LogLevelOpt = Annotated[str, typer.Option(help="uvicorn log level.")]


def serve_command(
    ctx: typer.Context,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8080,
    tokens_file: TokensFileOpt = None,
    workers: WorkersOpt = 1,
    max_queued_jobs: MaxQueuedJobsOpt = 16,
    memory_cache_mb: MemoryCacheMbOpt = 256,
    lookup_threads: LookupThreadsOpt = None,
    insecure_no_auth: InsecureNoAuthOpt = False,
    log_level: LogLevelOpt = "info",
) -> None:
    """Serve the registry over HTTP: banks, users, adapt jobs and PEFT adapter archives.

    Reads need a read or admin bearer token, writes an admin token. One process:
    jobs and the archive cache live in memory, so scale out behind a load balancer
    with a shared database and store rather than with uvicorn workers.
    """
    from mta.registry.context import RegistryContext
    from mta.registry.service import check_schema
    from mta.server.app import create_app
    from mta.server.auth import load_tokens
    from mta.server.settings import ServerSettings

    tokens = load_tokens(tokens_file)
    check_auth(tokens, insecure_no_auth=insecure_no_auth)
    where = locations(ctx)
    registry = RegistryContext.open(where["db"], where["store"], where["cache_dir"])
    try:
        check_schema(registry.engine)  # refuse to start on a registry `mta init` never made
        registry.store.check_exists()  # ... or on a store it never made (a wrong URL)
        check_listen_address(host, port)
        settings = ServerSettings(
            db_url=registry.db_url,
            store_url=registry.store_url,
            cache_dir=registry.cache_dir,
            tokens=tokens or None,
            workers=workers,
            max_queued_jobs=max_queued_jobs,
            memory_cache_bytes=memory_cache_mb * 1024**2,
            lookup_threads=lookup_threads,
        )
        app = create_app(settings, ctx=registry)
        if insecure_no_auth:
            output.warning("serving WITHOUT authentication (--insecure-no-auth)")
        run_server(app, host=host, port=port, log_level=log_level)
    finally:
        registry.close()


def run_server(app: Any, *, host: str, port: int, log_level: str) -> None:
    """Serve until interrupted; a server that stops itself (it could not start) is an error.

    uvicorn logs why and exits with its own code (1 or 3) and no `Error:` line.

    Raises:
        RegistryError: uvicorn exited with a failure code.
    """
    from mta.registry.errors import RegistryError
    from mta.server.listener import serve

    try:
        # Not plain uvicorn.run: its 16 KiB request-head buffer resets a connection with a
        # large header before the app can answer 431 (server/listener.py).
        serve(app, host=host, port=port, log_level=log_level)
    except SystemExit as stop:
        if stop.code in (0, None):
            raise
        raise RegistryError(
            f"the server on {host}:{port} stopped (exit {stop.code}); uvicorn's log above says why"
        ) from None


def check_listen_address(host: str, port: int) -> None:
    """Refuse an address the server could not listen on: an unknown --host, a busy --port.

    Binds (and closes) a socket on every address the host resolves to, as uvicorn's
    listener will, with the same SO_REUSEADDR, so it fails the same way but first.

    Raises:
        InvalidInputError: one line naming the host or the port and the system's reason.
    """
    import socket

    from mta.registry.errors import InvalidInputError

    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise InvalidInputError(
            f"--host {host!r} is not an address to listen on ({reason})"
        ) from None
    for family, kind, proto, _name, address in dict.fromkeys(infos):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as error:
                reason = (error.strerror or str(error)).lower()
                raise InvalidInputError(
                    f"cannot listen on {host}:{port} ({address[0]}): {reason}"
                ) from None


def check_auth(tokens: TokenSet, *, insecure_no_auth: bool) -> None:
    """Refuse to serve without tokens unless --insecure-no-auth, and with tokens and the flag.

    Raises:
        InvalidInputError: no tokens and no --insecure-no-auth, or tokens and the flag.
    """
    from mta.registry.errors import InvalidInputError

    if not tokens and not insecure_no_auth:
        raise InvalidInputError(
            "no tokens configured: set MTA_READ_TOKEN and/or MTA_ADMIN_TOKEN, pass "
            "--tokens-file, or --insecure-no-auth to serve without authentication"
        )
    if tokens and insecure_no_auth:
        raise InvalidInputError("--insecure-no-auth contradicts the tokens configured")
