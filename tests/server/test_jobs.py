"""The background job runner: lifecycle, errors, bounds."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from mta.registry.errors import NotFoundError
from mta.server.errors import ApiError
from mta.server.jobs import JobRunner


def _wait_until(predicate: Callable[[], bool]) -> None:
    """Poll until predicate() holds; fail (not hang) if it never does."""
    for _ in range(6000):
        if predicate():
            return
        threading.Event().wait(0.01)
    pytest.fail("condition never became true")


def _wait_finished(runner: JobRunner, job_id: str) -> Any:
    _wait_until(lambda: runner.get(job_id).status in ("succeeded", "failed"))
    return runner.get(job_id)


def test_job_goes_queued_running_succeeded_with_progress() -> None:
    runner = JobRunner(1)
    release = threading.Event()
    seen: list[str] = []

    def work(progress: Callable[[str, int, int], None]) -> dict[str, Any]:
        progress("train", 1, 2)
        release.wait()
        return {"stack_id": 7}

    job = runner.submit("adapt", "u1", {"shots": 2}, work)
    assert job.status == "queued"
    _wait_until(lambda: runner.get(job.id).progress is not None)
    current = runner.get(job.id)
    seen.append(current.status)
    release.set()
    finished = _wait_finished(runner, job.id)
    runner.shutdown()
    assert seen == ["running"]
    assert current.progress == {"stage": "train", "done": 1, "total": 2}
    assert finished.status == "succeeded" and finished.result == {"stack_id": 7}
    assert finished.started_at is not None and finished.finished_at >= finished.started_at


def test_failed_job_carries_the_mapped_error() -> None:
    runner = JobRunner(1)

    def work(_: Callable[[str, int, int], None]) -> dict[str, Any]:
        raise NotFoundError("no user 'ghost'")

    job = runner.submit("adapt", "ghost", {}, work)
    finished = _wait_finished(runner, job.id)
    runner.shutdown()
    assert finished.status == "failed"
    assert finished.error == {"code": "not_found", "message": "no user 'ghost'"}


def test_one_active_job_per_user_and_bounded_queue() -> None:
    runner = JobRunner(1, max_queued=1)
    release = threading.Event()

    def work(_: Callable[[str, int, int], None]) -> dict[str, Any]:
        release.wait()
        return {}

    first = runner.submit("adapt", "a", {}, work)
    _wait_until(lambda: runner.get(first.id).status == "running")
    with pytest.raises(ApiError) as busy:
        runner.submit("adapt", "a", {}, work)
    assert busy.value.status == 409
    runner.submit("adapt", "b", {}, work)  # queued behind "a"
    with pytest.raises(ApiError) as full:
        runner.submit("adapt", "c", {}, work)
    assert full.value.status == 429 and "Retry-After" in full.value.headers
    release.set()
    runner.shutdown()
    assert runner.counts()["succeeded"] == 2


def test_finished_records_are_trimmed() -> None:
    runner = JobRunner(1, max_kept=2)
    ids = []
    for user in ("a", "b", "c", "d"):
        job = runner.submit("adapt", user, {}, lambda _: {})
        _wait_finished(runner, job.id)
        ids.append(job.id)
    runner.shutdown()
    assert runner.get(ids[0]) is None
    assert runner.get(ids[-1]) is not None
    assert sum(runner.counts().values()) <= 3
