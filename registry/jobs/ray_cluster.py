"""Connecting to Ray for bulk jobs: the lazy import, where workers find the registry, and
the rule that keeps a machine-local registry (SQLite, `file://` store) off remote nodes.

Ray is an optional extra (`mta-registry[ray]`); nothing here imports it at module level, so
`mta --help` and the local executor never need it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mta.registry.context import RegistryContext
from mta.registry.errors import InvalidInputError

RAY_MISSING = "Ray is not installed: pip install 'mta-registry[ray]'"
LOCAL_ADDRESSES = (None, "", "local")
# Non-secret settings the workers need to read the same registry as the driver. Credentials
# (AWS keys, the database password outside the URL) come from each node's own environment.
FORWARDED_ENV = (
    "MTA_S3_ENDPOINT_URL",
    "MTA_BASE_MODEL",
    "MTA_EMBEDDER",
    "MTA_CACHE_DIR",
    "MTA_CACHE_MAX_BYTES",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)


def import_ray() -> Any:
    """The `ray` module, or a one-line InvalidInputError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise InvalidInputError(RAY_MISSING) from None
    return ray


def worker_locations(ctx: RegistryContext) -> tuple[str, str, str]:
    """(db URL, store URL, cache dir) as a worker process opens them: local paths made absolute.

    A Ray worker does not run in the driver's working directory, so `sqlite:///.mta/...`
    would name another file there.
    """
    url = ctx.engine.url
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        url = url.set(database=str(Path(url.database).expanduser().absolute()))
    db_url = url.render_as_string(hide_password=False)
    return db_url, ctx.store.url, str(Path(ctx.cache_dir).expanduser().absolute())


def machine_local_parts(ctx: RegistryContext) -> list[str]:
    """The parts of the registry only this machine can reach (SQLite, a `file://` store)."""
    from mta.storage.schemes import url_scheme

    parts = []
    if ctx.engine.url.get_backend_name() == "sqlite":
        parts.append("a SQLite database")
    if url_scheme(ctx.store.url) == "file":
        parts.append("a file:// store")
    return parts


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine through loopback (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def address_host(address: str) -> str | None:
    """The host of a `ray://HOST:PORT` or `HOST:PORT` address; None for `auto`."""
    if address == "auto":
        return None
    text = address if "://" in address else f"//{address}"
    return urlsplit(text).hostname


def check_local_registry(ctx: RegistryContext, address: str | None, node_hosts: set[str]) -> None:
    """Refuse a machine-local registry when a Ray node may run on another machine.

    The rule: SQLite and `file://` are allowed only when every alive Ray node runs on this
    machine, i.e. its address is loopback or one of this machine's own. Before connecting,
    an explicit non-loopback host is refused; after connecting (`auto`, loopback, or an
    already initialized Ray) the nodes' addresses are checked.

    Args:
        address: the `--address` given (None/"local" for a private local Ray).
        node_hosts: the alive nodes' addresses (empty before connecting).

    Raises:
        InvalidInputError: one line naming the local part and what to use instead.
    """
    parts = machine_local_parts(ctx)
    if not parts:
        return
    own = _own_addresses()
    host = address_host(address) if address not in LOCAL_ADDRESSES else None
    remote = sorted(h for h in node_hosts if h not in own and not is_loopback(h))
    if host is not None and not is_loopback(host) and host not in own:
        remote = [host]
    if remote:
        raise InvalidInputError(
            f"--executor ray with nodes on other machines ({', '.join(remote)}) needs a "
            f"registry every node reaches, not {' and '.join(parts)}: use PostgreSQL "
            "(--db postgresql+psycopg://...) and S3 (--store s3://...)"
        )


def _own_addresses() -> set[str]:
    """This machine's addresses as Ray reports node addresses (best effort)."""
    own = {"127.0.0.1", "::1", "localhost", socket.gethostname()}
    with suppress(OSError):
        own.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None))
    try:
        from ray.util import get_node_ip_address

        own.add(get_node_ip_address())
    except Exception:  # noqa: BLE001 - only a hint; loopback and the hostname still count
        pass
    return own


def worker_env() -> dict[str, str]:
    """The driver's settings from `FORWARDED_ENV` that are set, for the workers' runtime env."""
    return {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}


@contextmanager
def ray_session(
    ctx: RegistryContext, address: str | None, *, num_cpus: int, check_registry: bool = True
) -> Iterator[Any]:
    """Connect to Ray (or start a private local one) for one job, and disconnect after it.

    Args:
        address: None or "local": a private Ray on this machine with `num_cpus` CPUs;
            "auto", "HOST:PORT" or "ray://HOST:PORT": an existing cluster. A Ray the
            caller already initialized is used as it is and left running.
        check_registry: apply `check_local_registry` (off when workers never open the
            registry, as in a bank build whose tasks only return bytes).

    Yields:
        The `ray` module, connected.

    Raises:
        InvalidInputError: Ray missing, or a machine-local registry with remote nodes.
    """
    ray = import_ray()
    if check_registry:
        check_local_registry(ctx, address, set())
    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
        if address in LOCAL_ADDRESSES:
            # "local", not None: ray.init() would join RAY_ADDRESS or the last `ray start`.
            options.update(address="local", num_cpus=num_cpus, include_dashboard=False)
        else:
            options["address"] = address
        ray.init(**options)
        started = True
    try:
        if check_registry:
            hosts = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
            check_local_registry(ctx, address, hosts)
        yield ray
    finally:
        if started:
            ray.shutdown()


def reserve_worker_cpus(ray: Any) -> int:
    """Fit this Ray worker's torch threads to the CPUs Ray assigned it; returns the count.

    Without this every worker starts one thread per core of the node: two 1-CPU actors
    on two cores then run four spinning threads (see `mta.threads`).
    """
    from mta.threads import reserve_cpus

    assigned = ray.get_runtime_context().get_assigned_resources().get("CPU")
    return reserve_cpus(float(assigned) if assigned else None)
