"""Background jobs (stack training) on a bounded thread pool, tracked in memory.

Training is CPU-heavy, so the pool defaults to one worker and the queue is
bounded: a submission beyond ``max_queued`` waiting jobs is refused (HTTP 429)
instead of piling up. Job records live in this process only (a restart forgets
them; the stacks they produced are in the registry); the oldest finished
records are dropped past ``max_kept``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from mta.errors import one_line
from mta.progress import ProgressFn
from mta.registry.errors import InvalidInputError

from .errors import ApiError, error_mappings

log = logging.getLogger("mta.server")

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
FINISHED = (SUCCEEDED, FAILED)


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Job:
    """A snapshot of one job."""

    id: str
    kind: str
    user_id: str
    status: str
    created_at: datetime
    params: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    progress: dict[str, Any] | None = None


def _error_of(exc: BaseException) -> dict[str, str]:
    """The same code/message an HTTP error response would carry for ``exc``."""
    for mapping in error_mappings():
        if isinstance(exc, mapping.exc_type):
            return {"code": mapping.code, "message": one_line(exc)}
    return {"code": "internal_error", "message": f"{type(exc).__name__}: {one_line(exc)}"}


class JobRunner:
    """Runs submitted callables on a bounded pool and keeps their status for polling."""

    def __init__(self, workers: int = 1, *, max_queued: int = 16, max_kept: int = 1000) -> None:
        if workers < 1 or max_queued < 1 or max_kept < 1:
            raise InvalidInputError("workers, max_queued and max_kept must be at least 1")
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mta-job")
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._max_queued = max_queued
        self._max_kept = max_kept

    def submit(
        self,
        kind: str,
        user_id: str,
        params: dict[str, Any],
        fn: Callable[[ProgressFn], dict[str, Any]],
    ) -> Job:
        """Queue ``fn(progress)``; its returned dict becomes the job's result.

        Raises:
            ApiError: 409 when a job for this user is already queued or running,
                429 when the queue is full.
        """
        with self._lock:
            active = [j for j in self._jobs.values() if j.status not in FINISHED]
            if any(j.user_id == user_id for j in active):
                raise ApiError(
                    409, "job_in_progress", f"user {user_id!r} already has a job queued or running"
                )
            if sum(j.status == QUEUED for j in active) >= self._max_queued:
                raise ApiError(
                    429,
                    "queue_full",
                    f"{self._max_queued} jobs are already queued; retry later",
                    {"Retry-After": "30"},
                )
            job = Job(
                id=uuid.uuid4().hex,
                kind=kind,
                user_id=user_id,
                status=QUEUED,
                created_at=_now(),
                params=params,
            )
            self._jobs[job.id] = job
            self._trim()
        self._pool.submit(self._run, job.id, fn)
        return job

    def get(self, job_id: str) -> Job | None:
        """The job's current snapshot, or None if unknown (or long forgotten)."""
        with self._lock:
            return self._jobs.get(job_id)

    def counts(self) -> dict[str, int]:
        """Number of kept jobs per status."""
        result = dict.fromkeys((QUEUED, RUNNING, SUCCEEDED, FAILED), 0)
        with self._lock:
            for job in self._jobs.values():
                result[job.status] += 1
        return result

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking jobs; with ``wait``, let the queued and running ones finish."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def _update(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            self._jobs[job_id] = replace(self._jobs[job_id], **changes)

    def _run(self, job_id: str, fn: Callable[..., dict[str, Any]]) -> None:
        self._update(job_id, status=RUNNING, started_at=_now())

        def progress(stage: str, done: int, total: int) -> None:
            self._update(job_id, progress={"stage": stage, "done": done, "total": total})

        try:
            result = fn(progress)
        except Exception as exc:  # noqa: BLE001 - reported on the job, never lost
            error = _error_of(exc)
            if error["code"] == "internal_error":
                log.exception("job %s failed", job_id)
            self._update(job_id, status=FAILED, finished_at=_now(), error=error)
        else:
            self._update(job_id, status=SUCCEEDED, finished_at=_now(), result=result)

    def _trim(self) -> None:
        # Called with the lock held; only finished records are ever dropped.
        excess = len(self._jobs) - self._max_kept
        for job_id in [j.id for j in self._jobs.values() if j.status in FINISHED][: max(excess, 0)]:
            del self._jobs[job_id]
