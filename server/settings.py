"""What a server process is configured with (flags of `mta serve`, or a test's choice)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .auth import TokenSet

DEFAULT_MEMORY_CACHE_BYTES = 256 * 1024**2
DEFAULT_MAX_BODY_BYTES = 16 * 1024**2
DEFAULT_MAX_HEADER_BYTES = 16 * 1024  # uvicorn's own bound before `listener` raised it
POSTGRES_LOOKUP_THREADS = 4  # within SQLAlchemy's default pool of 5


@dataclass(frozen=True)
class ServerSettings:
    """Registry location, auth and resource bounds of one server.

    Attributes:
        db_url: registry database URL (None: ``MTA_DB_URL`` or the SQLite default).
        store_url: blob store URL (None: ``MTA_STORE_URL`` or ``file://.mta/store``).
        cache_dir: export cache folder (None: ``MTA_CACHE_DIR`` or ``.mta/cache``).
        tokens: accepted bearer tokens; None disables auth (``--insecure-no-auth`` only).
        workers: threads training stacks in the background.
        max_queued_jobs: jobs allowed to wait for a worker before submissions get 429.
        memory_cache_bytes: bound of the in-process LRU of adapter archives (0 disables it).
        max_body_bytes: largest accepted request body (profiles), else 413.
        max_header_bytes: largest accepted sum of header names and values, else 431.
        lookup_threads: threads reading the registry for adapter fetches (None: see
            `default_lookup_threads`).
    """

    db_url: str | None = None
    store_url: str | None = None
    cache_dir: Path | None = None
    tokens: TokenSet | None = None
    workers: int = 1
    max_queued_jobs: int = 16
    memory_cache_bytes: int = DEFAULT_MEMORY_CACHE_BYTES
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    lookup_threads: int | None = None


def default_lookup_threads(db_url: str) -> int:
    """One lookup thread on SQLite, a few on a database server.

    SQLite reads run in-process and hold the GIL for most of their time: two threads
    reading at once in one process did 0.57-0.74x the reads/s of two that take turns
    (`python -m bench --only reads`), so one thread queues them FIFO, off the event loop.
    Reads take no lock (read-only sessions), so a writer in another process no longer
    stalls them. PostgreSQL reads run in parallel and wait on the network, so they get more.
    """
    return 1 if db_url.startswith("sqlite") else POSTGRES_LOOKUP_THREADS
