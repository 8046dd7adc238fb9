"""Bulk adapt/fuse on a local Ray (2 CPUs): same outcomes as the local executor, retries of
units whose worker died, and the refusal of a machine-local registry on remote nodes."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mta.registry.errors import InvalidInputError
from mta.registry.jobs.bulk import WorkSpec, run_local
from mta.registry.jobs.outcomes import ADAPTED, FAILED, SKIPPED
from mta.registry.jobs.ray_cluster import check_local_registry, worker_locations
from mta.registry.jobs.ray_runner import BulkWorker, _Driver, _Unit, run_ray
from mta.registry.requests import AdaptRequest, FuseRequest
from mta.registry.service import add_user, get_user
from tests.support import TASK, movie_user

REQUEST = AdaptRequest(shots=2, max_steps=1)
NOBODY = ("nobody", "no user 'nobody'; add one with `mta user add`")


def _require_ray() -> Any:
    try:
        import ray
    except ImportError:
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail("ray is not installed but CI=true: `make setup` installs .[all]")
        pytest.skip("ray is not installed (pip install 'mta-registry[ray]')")
    return ray


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """A private local Ray with 2 CPUs for this module, shut down after it."""
    ray = _require_ray()
    # The test actor below lives in a test module the workers cannot import: ship it by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # address="local": a new private instance even when RAY_ADDRESS or a `ray start` exists.
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def _add(ctx, *user_ids: str) -> None:
    for user_id in user_ids:
        add_user(ctx, user_id=user_id, task=TASK, profile=movie_user(user_id, 6))


def test_adapt_and_fuse_on_ray_report_like_the_local_executor(bank_registry, local_ray):
    _add(bank_registry, "r1", "r2", "r3", "r4", "r5")
    seen = []
    ids = ["r1", "r2", "nobody", "r3", "r4", "r5"]
    summary = run_ray(
        bank_registry,
        ids,
        WorkSpec.adapt_users(REQUEST),
        workers=2,
        unit=2,
        on_outcome=lambda outcome, done, total: seen.append((outcome.user_id, done, total)),
    )
    assert sorted(summary.done) == ["r1", "r2", "r3", "r4", "r5"]
    assert summary.failed == (NOBODY,) and summary.skipped == ()
    assert sorted(u for u, _, _ in seen) == sorted(ids)
    assert [d for _, d, _ in seen] == list(range(1, 7)) and {t for _, _, t in seen} == {6}
    assert summary.seconds_p50 > 0 and set(summary.phase_means) == {"fuse", "train", "commit"}
    for user_id in summary.done:
        detail = get_user(bank_registry, user_id)
        assert detail.stack is not None and detail.num_stacks == 1
    # Idempotence: the same job again skips everyone, on Ray as in one process.
    again = run_ray(bank_registry, ids, WorkSpec.adapt_users(REQUEST), workers=1, unit=4)
    local = run_local(bank_registry, ids, WorkSpec.adapt_users(REQUEST))
    assert sorted(again.skipped) == sorted(local.skipped) == ["r1", "r2", "r3", "r4", "r5"]
    assert again.failed == local.failed == (NOBODY,)
    fused = run_ray(bank_registry, ["r1"], WorkSpec.fuse_users(FuseRequest(top_k=2)), workers=1)
    assert fused.skipped == ("r1",)
    forced = run_ray(
        bank_registry, ["r1"], WorkSpec.fuse_users(FuseRequest(top_k=3), force=True), workers=1
    )
    assert forced.done == ("r1",) and get_user(bank_registry, "r1").num_recipes == 2


def test_fuse_stale_on_ray_refuses_onto_the_latest_bank_like_the_local_runner(
    bank_registry, push_bank_fn, local_ray
):
    # `mta user fuse --stale --executor ray` once dropped `refresh` on its way to the
    # actors, so Ray skipped the stale users that the local runner re-fused.
    _add(bank_registry, "s1", "s2")
    spec = WorkSpec.fuse_users(FuseRequest(), refresh=True)
    assert run_local(bank_registry, ["s1", "s2"], WorkSpec.fuse_users(FuseRequest())).done
    push_bank_fn(bank_registry, seed=1)  # v2: both recipes are on an older bank now
    on_ray = run_ray(bank_registry, ["s1"], spec, workers=1)
    local = run_local(bank_registry, ["s2"], spec)
    assert on_ray.done == ("s1",) and local.done == ("s2",)
    for user_id in ("s1", "s2"):
        detail = get_user(bank_registry, user_id)
        assert detail.recipe.bank_version == 2 and detail.num_recipes == 2
    again = run_ray(bank_registry, ["s1", "s2"], spec, workers=1)
    assert sorted(again.skipped) == ["s1", "s2"]  # on the latest now: nothing to refresh


class CrashingWorker(BulkWorker):
    """Dies like `kill -9` on a unit holding `crash`, while `marker` says how often to die.

    It dies holding the claim on `crash`, as a worker killed mid-training does, and as one
    on another machine (its pid cannot be checked from here): only the job may retake it.
    """

    def __init__(self, *args: Any, marker: str) -> None:
        super().__init__(*args)
        self.marker = Path(marker)

    def run_unit(self, user_ids: list[str]) -> list[dict[str, Any]]:
        results = []
        for user_id in user_ids:
            left = int(self.marker.read_text()) if self.marker.exists() else 0
            if user_id == "crash" and left > 0:
                self.marker.write_text(str(left - 1))
                _leave_claim(self.ctx, user_id, self.spec.job)
                os._exit(9)  # mid-unit: the users before it have committed
            results.extend(super().run_unit([user_id]))
        return results


def _leave_claim(ctx: Any, user_id: str, job: str) -> None:
    """The claim a worker on another machine holds on `user_id` for `job` (a 10-min lease)."""
    from datetime import timedelta

    from sqlalchemy import delete

    from mta.registry.models import SqlClaim, utcnow

    now = utcnow()
    with ctx.session() as session:
        session.execute(delete(SqlClaim).where(SqlClaim.user_id == user_id))
        session.add(
            SqlClaim(
                user_id=user_id, job_id=job, kind="adapt", host="node-2/0123456789ab",
                pid=4242, claimed_at=now, expires_at=now + timedelta(minutes=10),
            )
        )  # fmt: skip


def _claimed_users(ctx: Any) -> list[str]:
    from sqlalchemy import select

    from mta.registry.models import SqlClaim

    with ctx.read_session() as session:
        return sorted(session.scalars(select(SqlClaim.user_id)))


def _drive(ray: Any, ctx: Any, units: list[list[str]], marker: Path, workers: int) -> list:
    spec = WorkSpec.adapt_users(REQUEST)
    actor = ray.remote(CrashingWorker).options(num_cpus=1, max_restarts=0)
    driver = _Driver(ray, lambda: actor.remote(*worker_locations(ctx), spec, marker=str(marker)))
    total = sum(len(u) for u in units)
    return driver.run([_Unit(list(u)) for u in units], workers, total, None)


def test_a_unit_whose_worker_dies_is_retried_elsewhere(bank_registry, local_ray, tmp_path, caplog):
    _add(bank_registry, "k1", "crash", "k2", "k3")
    marker = tmp_path / "deaths"
    marker.write_text("1")
    outcomes = _drive(local_ray, bank_registry, [["k1", "crash"], ["k2", "k3"]], marker, 2)
    statuses = {o.user_id: o.status for o in outcomes}
    # k1 committed before the crash, so the retry skips it; nobody is trained twice. The
    # dead worker's claim on `crash` is the job's own: the retry takes it over at once.
    assert statuses == {"k1": SKIPPED, "crash": ADAPTED, "k2": ADAPTED, "k3": ADAPTED}
    assert "retrying a unit of 2 users (try 2 of 3)" in caplog.text
    for user_id in statuses:
        assert get_user(bank_registry, user_id).num_stacks == 1
    assert _claimed_users(bank_registry) == []


def test_a_unit_that_kills_every_worker_fails_after_three_tries(bank_registry, local_ray, tmp_path):
    _add(bank_registry, "crash")
    marker = tmp_path / "deaths"
    marker.write_text("99")
    outcomes = _drive(local_ray, bank_registry, [["crash"]], marker, 1)
    assert [(o.user_id, o.status) for o in outcomes] == [("crash", FAILED)]
    assert outcomes[0].reason.startswith("worker died 3 times on this unit")
    assert get_user(bank_registry, "crash").stack is None
    # The last dead worker's claim outlives the job until its lease ends: another job
    # (here a local one) leaves the user alone meanwhile, as it would a live job's.
    assert _claimed_users(bank_registry) == ["crash"]
    later = run_local(bank_registry, ["crash"], WorkSpec.adapt_users(REQUEST))
    assert later.busy == ("crash",) and later.failed == ()


def _fake_ctx(db_url: str, store_url: str) -> Any:
    from sqlalchemy.engine import make_url

    return SimpleNamespace(
        engine=SimpleNamespace(url=make_url(db_url)), store=SimpleNamespace(url=store_url)
    )


def test_a_machine_local_registry_is_refused_on_remote_nodes(bank_registry):
    _require_ray()
    spec = WorkSpec.adapt_users(REQUEST)
    with pytest.raises(InvalidInputError) as caught:
        run_ray(bank_registry, ["u"], spec, address="ray://10.1.2.3:10001")
    message = str(caught.value)
    assert "\n" not in message and "10.1.2.3" in message
    assert "a SQLite database and a file:// store" in message and "PostgreSQL" in message
    with pytest.raises(InvalidInputError, match="a SQLite database"):
        check_local_registry(bank_registry, "auto", {"10.9.9.9", "127.0.0.1"})
    check_local_registry(bank_registry, "auto", {"127.0.0.1"})  # one machine: allowed
    check_local_registry(bank_registry, "ray://localhost:10001", set())
    shared = _fake_ctx("postgresql+psycopg://mta@db.internal/mta", "s3://bucket/store")
    check_local_registry(shared, "ray://10.1.2.3:10001", {"10.9.9.9"})
    with pytest.raises(InvalidInputError, match="not a file:// store"):
        check_local_registry(
            _fake_ctx("postgresql+psycopg://mta@db/mta", "file:///srv/store"),
            "10.0.0.7:6379",
            set(),
        )


def test_bank_build_on_ray_trains_each_anchor_as_a_task(
    registry, local_ray, tmp_path, tiny_model_dir, tiny_embedder_dir
):
    from mta.registry.service import build_bank, fsck, get_bank
    from tests.support import write_users

    users = [movie_user(f"c{i}", 9 if i % 2 else 5, seed=i) for i in range(6)]
    data = write_users(tmp_path / "users.json", users)
    stages: list[tuple[str, int, int]] = []

    def build(executor: str) -> Any:
        return build_bank(
            registry,
            task=TASK,
            data_path=data,
            anchors=2,
            base_model=str(tiny_model_dir),
            embedder=str(tiny_embedder_dir),
            max_steps=1,
            executor=executor,
            workers=2,
            progress=lambda stage, done, total: stages.append((stage, done, total)),
        )

    on_ray = build("ray")
    assert on_ray.version == 1 and on_ray.num_anchors == 2
    assert [s for s in stages if s[0] == "train"] == [("train", 1, 2), ("train", 2, 2)]
    here = build("local")
    ray_anchors = get_bank(registry, TASK, "1").anchors
    local_anchors = get_bank(registry, TASK, "2").anchors
    assert [a.anchor_id for a in ray_anchors] == [a.anchor_id for a in local_anchors]
    # Same anchors, same blob sizes (the bytes match too here; thread counts may differ elsewhere).
    assert [a.adapter_bytes for a in ray_anchors] == [a.adapter_bytes for a in local_anchors]
    assert here.version == 2 and fsck(registry).ok
    with pytest.raises(InvalidInputError, match="unknown executor"):
        build_bank(registry, task=TASK, data_path=data, anchors=2, executor="dask")


def test_workers_that_cannot_open_the_registry_stop_the_job_with_their_error(local_ray, tmp_path):
    from mta.registry.context import RegistryContext
    from mta.registry.errors import NotInitializedError

    # Never `mta init`ed: every worker fails its ready() check, and the job says why.
    empty = RegistryContext.in_folder(tmp_path / "empty")
    with empty, pytest.raises(NotInitializedError):
        run_ray(empty, ["u1", "u2"], WorkSpec.adapt_users(REQUEST), workers=2)


def test_a_one_cpu_ray_worker_runs_torch_on_one_thread(local_ray):
    import ray

    from mta.registry.jobs.ray_cluster import reserve_worker_cpus

    @ray.remote(num_cpus=1)
    def threads_in_worker() -> tuple[int, int]:
        import torch

        return reserve_worker_cpus(ray), torch.get_num_threads()

    assert ray.get(threads_in_worker.remote()) == (1, 1)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_bank_tasks_on_ray_load_the_model_on_the_requested_device(
    registry, local_ray, tiny_model_dir
):
    # The device reaches each task: on a machine without CUDA a task asked for "cuda"
    # fails with the device's own one-line error instead of training on the CPU.
    from mta.devices import DeviceError
    from mta.registry.jobs.bank_ray import train_anchors_ray
    from mta.training import TrainConfig

    config = TrainConfig(target_modules=["q_proj"], rank=1, max_steps=1)
    examples = [[("a prompt", "a target")]]
    with pytest.raises(DeviceError, match="no CUDA device"):
        train_anchors_ray(registry, str(tiny_model_dir), examples, config, {}, device="cuda")


def test_units_keep_every_worker_busy_and_stay_small():
    from mta.registry.jobs.ray_runner import MAX_UNIT, unit_size

    # 12 users on 2 workers: 4 units of 3, two per worker (a fixed 16 gave one worker all 12).
    assert unit_size(12, 2) == 3
    assert unit_size(1, 2) == 1 and unit_size(0, 2) == 1
    assert unit_size(10_000, 4) == MAX_UNIT
    for users, workers in ((5, 2), (13, 3), (100, 8)):
        size = unit_size(users, workers)
        assert -(-users // size) >= min(users, workers)  # at least one unit per worker
