"""The app's shared state: the registry, the job runner, caches and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import Request

from mta.registry import service
from mta.registry.context import RegistryContext
from mta.registry.service import AdapterIdentity, sqlite_path

from .archive import ArchiveCache, IdentityCache
from .jobs import JobRunner
from .metrics import Labels, Metrics
from .settings import ServerSettings, default_lookup_threads

T = TypeVar("T")


class AppState:
    """Everything the routes share: the registry, the job runner, caches and metrics."""

    def __init__(self, settings: ServerSettings, ctx: RegistryContext) -> None:
        self.settings = settings
        self.ctx = ctx
        self.jobs = JobRunner(settings.workers, max_queued=settings.max_queued_jobs)
        self.archives = ArchiveCache(settings.memory_cache_bytes)
        self.metrics = Metrics()
        self.metrics.add_gauges(self._gauges)
        threads = settings.lookup_threads
        threads = default_lookup_threads(ctx.db_url) if threads is None else threads
        # 0: on the event loop itself (no thread hop, but a slow read stalls every request).
        self.lookups = ThreadPoolExecutor(threads, "mta-lookup") if threads else None
        db_file = sqlite_path(ctx.db_url)
        self.identities = IdentityCache(db_file) if db_file and db_file.exists() else None

    def close(self, *, close_registry: bool) -> None:
        """At shutdown: stop the job and lookup threads, close the caches (and the registry)."""
        self.jobs.shutdown(wait=False)
        if self.lookups is not None:
            self.lookups.shutdown(wait=False, cancel_futures=True)
        if self.identities is not None:
            self.identities.close()
        if close_registry:
            self.ctx.close()

    def forget(self, user_id: str) -> None:
        """After a deletion: drop the user's archives (a racing fetch drops its own)."""
        self.archives.discard_owner(user_id)

    def _gauges(self) -> Iterable[tuple[str, str, Labels, float]]:
        yield (
            "mta_adapter_memory_cache_bytes",
            "Bytes of adapter archives held in memory.",
            (),
            self.archives.total_bytes,
        )
        for status, count in self.jobs.counts().items():
            yield "mta_jobs", "Adapt jobs kept in memory, by status.", (("status", status),), count

    def adapter_identity(self, user_id: str) -> AdapterIdentity:
        """What fixes a user's exported adapter bytes now: the ETag input (see archive.py).

        The service's own identity read, the one its export-cache key uses, so the two
        agree; kept in `identities` until the registry changes.

        Raises:
            NotFoundError: unknown user, or no recipe yet, so there is no adapter to serve.
        """
        if self.identities is None:
            return service.adapter_identity(self.ctx, user_id)
        version, identity = self.identities.get(user_id)
        if identity is None:
            identity = service.adapter_identity(self.ctx, user_id)
            self.identities.put(user_id, version, identity)
        return identity

    def cached_identity(self, user_id: str) -> AdapterIdentity | None:
        """The user's identity if the registry has not changed since it was read, else None."""
        return self.identities.get(user_id)[1] if self.identities is not None else None

    async def lookup(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a registry read on the lookup threads (FIFO, bounded) and await it."""
        if self.lookups is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.lookups, fn, *args)


def app_state(request: Request) -> AppState:
    """The app's shared state."""
    return request.app.state.mta
