"""`mta serve`: the registry over HTTP (FastAPI + uvicorn), adapters materialized on demand."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mta.cli import output
from mta.cli.options import locations

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
    int, typer.Option(min=1, help="Adapt jobs allowed to wait before new ones get 429.")
]
MemoryCacheMbOpt = Annotated[
    int, typer.Option(min=0, help="In-memory LRU of adapter archives, MiB (0: off).")
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
    import uvicorn

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
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    finally:
        registry.close()


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
