"""Per-user claims of bulk jobs: busy users, release, expiry, dead holders, renewal, schema."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from mta.registry.context import RegistryContext
from mta.registry.jobs import claims
from mta.registry.jobs.bulk import WorkSpec, adapt_one, fuse_one, run_local
from mta.registry.jobs.claims import Claimant, claimed, host_id, take_claim
from mta.registry.jobs.outcomes import ADAPTED, BUSY, FAILED, FUSED, SKIPPED, UserOutcome, summarize
from mta.registry.models import SqlClaim, as_utc, utcnow
from mta.registry.requests import AdaptRequest, FuseRequest
from mta.registry.service import add_user, fsck, gc, get_user
from tests.support import TASK, movie_user

REQUEST = AdaptRequest(shots=2, max_steps=1)
ELSEWHERE = "other-machine/0123456789ab"  # a host id that is never this machine's


def _add(ctx: RegistryContext, *user_ids: str) -> None:
    for user_id in user_ids:
        add_user(ctx, user_id=user_id, task=TASK, profile=movie_user(user_id, 6))


def _plant(
    ctx: RegistryContext,
    user_id: str,
    *,
    host: str = ELSEWHERE,
    pid: int = 4242,
    expires_in: float = 600.0,
    job_id: str = "f" * 32,
) -> None:
    """A claim as another job's process left it (alive or dead, expired or not)."""
    now = utcnow()
    with ctx.session() as session:
        session.add(
            SqlClaim(
                user_id=user_id,
                job_id=job_id,
                kind="adapt",
                host=host,
                pid=pid,
                claimed_at=now,
                expires_at=now + timedelta(seconds=expires_in),
            )
        )


def _claims(ctx: RegistryContext) -> dict[str, tuple[str, str, int]]:
    with ctx.read_session() as session:
        rows = session.scalars(select(SqlClaim)).all()
        return {r.user_id: (r.job_id, r.host, r.pid) for r in rows}


def _dead_pid() -> int:
    """The pid of a process of this machine that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_user_claimed_by_another_job_is_busy_until_released(bank_registry):
    _add(bank_registry, "b1")
    other = Claimant("a" * 32, "fuse")
    assert take_claim(bank_registry, "b1", other) is None
    busy = adapt_one(bank_registry, "b1", REQUEST)
    assert busy.status == BUSY and busy.stack_id is None
    assert busy.reason.startswith(f"claimed by another fuse job (aaaaaaaa, pid {other.pid} on ")
    assert fuse_one(bank_registry, "b1", FuseRequest()).status == BUSY
    detail = get_user(bank_registry, "b1")
    assert detail.num_recipes == 0 and detail.num_stacks == 0  # nothing was touched
    assert take_claim(bank_registry, "b1", Claimant("b" * 32, "adapt")) is not None
    claims.release_claim(bank_registry, "b1", other)
    assert _claims(bank_registry) == {}
    done = adapt_one(bank_registry, "b1", REQUEST)
    assert done.status == ADAPTED and _claims(bank_registry) == {}  # released after the work


def test_the_claim_is_held_while_working_and_released_after_success_and_failure(
    bank_registry, monkeypatch
):
    _add(bank_registry, "h1")
    seen = {}
    real_get_user = get_user

    def watching_get_user(ctx, user_id):
        seen[user_id] = _claims(ctx).get(user_id)
        return real_get_user(ctx, user_id)

    monkeypatch.setattr("mta.registry.jobs.batched.get_user", watching_get_user)
    spec = WorkSpec.adapt_users(REQUEST)
    summary = run_local(bank_registry, ["h1", "ghost"], spec)
    assert summary.done == ("h1",) and [u for u, _ in summary.failed] == ["ghost"]
    assert seen["h1"] == (spec.job, host_id(), os.getpid())
    assert seen["ghost"] == (spec.job, host_id(), os.getpid())
    assert _claims(bank_registry) == {}


def test_a_job_retakes_its_own_claim(bank_registry):
    """A Ray unit retried on another worker finds the claim its dead worker left."""
    _add(bank_registry, "r1")
    spec = WorkSpec.fuse_users(FuseRequest())
    _plant(bank_registry, "r1", job_id=spec.job)  # alive elsewhere, not expired, same job
    assert spec.run(bank_registry, "r1").status == FUSED
    assert _claims(bank_registry) == {}


def test_an_expired_claim_of_a_killed_job_is_taken_over(bank_registry):
    _add(bank_registry, "e1", "e2")
    _plant(bank_registry, "e1", expires_in=-1.0)  # its job died more than a lease ago
    _plant(bank_registry, "e2", expires_in=600.0)  # its job is alive on another machine
    summary = run_local(bank_registry, ["e1", "e2"], WorkSpec.adapt_users(REQUEST))
    assert summary.done == ("e1",) and summary.busy == ("e2",) and summary.failed == ()
    assert get_user(bank_registry, "e1").num_stacks == 1
    assert get_user(bank_registry, "e2").num_stacks == 0
    assert set(_claims(bank_registry)) == {"e2"}  # the live job's claim is left alone
    assert claims.drop_expired_claims(bank_registry) == 0
    _plant(bank_registry, "e3", expires_in=-5.0)
    assert claims.drop_expired_claims(bank_registry) == 1
    assert set(_claims(bank_registry)) == {"e2"}


def test_a_dead_process_of_this_machine_loses_its_claim_at_once(bank_registry):
    _add(bank_registry, "d1", "d2")
    _plant(bank_registry, "d1", host=host_id(), pid=_dead_pid())  # `kill -9` of a local job
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        _plant(bank_registry, "d2", host=host_id(), pid=live.pid)
        summary = run_local(bank_registry, ["d1", "d2"], WorkSpec.adapt_users(REQUEST))
    finally:
        live.kill()
        live.wait()
    assert summary.done == ("d1",) and summary.busy == ("d2",)
    assert claims._holder_is_dead(host_id(), live.pid)  # reaped now
    assert not claims._holder_is_dead(ELSEWHERE, live.pid)  # another machine: cannot tell
    assert not claims._holder_is_dead(host_id(), os.getpid())


def test_a_claim_is_renewed_while_its_user_is_worked_on(bank_registry):
    holder = Claimant("c" * 32, "adapt", lease_seconds=3.0)
    with claimed(bank_registry, "slow", holder) as busy:
        assert busy is None
        with bank_registry.read_session() as session:
            first = as_utc(session.get_one(SqlClaim, "slow").expires_at)
        time.sleep(3.5)  # past the first lease: only renewals keep it
        with bank_registry.read_session() as session:
            later = as_utc(session.get_one(SqlClaim, "slow").expires_at)
        assert later > first
        assert take_claim(bank_registry, "slow", Claimant("d" * 32, "adapt")) is not None
    assert _claims(bank_registry) == {}


def test_only_one_of_many_racing_jobs_gets_the_claim(bank_registry, tmp_path: Path):
    """Threads with their own connections race for one user: exactly one wins."""
    where = (bank_registry.db_url, bank_registry.store_url, tmp_path / "cache")
    contexts = [RegistryContext.open(*where) for _ in range(3)]
    racers = [Claimant(f"{n:032x}", "adapt") for n in range(6)]
    barrier = threading.Barrier(len(racers))
    results: list[object] = [None] * len(racers)

    def race(n: int) -> None:
        barrier.wait()
        results[n] = take_claim(contexts[n % len(contexts)], "hot", racers[n])

    threads = [threading.Thread(target=race, args=(n,)) for n in range(len(racers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ctx in contexts:
        ctx.close()
    winners = [n for n, r in enumerate(results) if r is None]
    assert len(winners) == 1
    assert _claims(bank_registry)["hot"][0] == racers[winners[0]].job_id


def test_busy_users_are_summarized_apart_and_are_not_failures():
    outcomes = [
        UserOutcome("u1", ADAPTED, 2.0, phases={"train": 1.0}),
        UserOutcome("u2", BUSY, 0.01, "claimed by another adapt job"),
        UserOutcome("u3", SKIPPED, 0.01, "current stack matches"),
        UserOutcome("u4", FAILED, 0.5, "boom"),
    ]
    summary = summarize(outcomes, 4.0)
    assert summary.busy == ("u2",) and summary.done == ("u1",) and summary.skipped == ("u3",)
    assert summary.failed == (("u4", "boom"),)
    assert summary.seconds_p50 == summary.seconds_p99 == 2.0  # busy users took no work
    data = summary.to_dict()
    assert list(data["busy"]) == ["u2"] and data["failed"] == [{"user_id": "u4", "reason": "boom"}]
    assert summarize([], 0.0).to_dict()["busy"] == ()


def test_fsck_and_gc_ignore_leftover_claims(bank_registry):
    _add(bank_registry, "g1")
    assert adapt_one(bank_registry, "g1", REQUEST).status == ADAPTED
    _plant(bank_registry, "g1", expires_in=-1.0)
    _plant(bank_registry, "ghost", expires_in=600.0)  # a claim on an id no user has
    assert fsck(bank_registry).ok
    result = gc(bank_registry, grace_seconds=0)
    assert result.deleted == () and result.superseded_stacks == 0
    assert fsck(bank_registry).ok and get_user(bank_registry, "g1").num_stacks == 1
    assert set(_claims(bank_registry)) == {"ghost"}  # gc dropped the expired one only
    assert adapt_one(bank_registry, "g1", REQUEST).status == SKIPPED  # taken over, then skipped


def test_deleting_a_user_removes_a_claim_a_killed_job_left(bank_registry):
    from mta.registry.service import delete_user

    _add(bank_registry, "h1")
    _plant(bank_registry, "h1", expires_in=600.0)  # a job on another machine died mid-user
    delete_user(bank_registry, "h1")
    assert "h1" not in _claims(bank_registry)


def test_the_claims_migration_goes_up_and_down(tmp_path: Path):
    from alembic import command

    from mta.registry.db import alembic_config, current_revision, make_engine, table_names, upgrade

    engine = make_engine(f"sqlite:///{tmp_path}/registry.db")
    try:
        assert upgrade(engine) == "0003"
        assert {"claims", "deletions"} <= set(table_names(engine))
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0002")
        assert current_revision(engine) == "0002"
        assert "claims" not in table_names(engine) and "deletions" in table_names(engine)
        assert upgrade(engine) == "0003" and "claims" in table_names(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize("bad_id", ["x" * 200, "../escape"])
def test_an_id_no_user_can_have_is_not_claimed_and_fails_on_its_own(bank_registry, bad_id):
    outcome = adapt_one(bank_registry, bad_id, REQUEST)
    assert outcome.status == FAILED and _claims(bank_registry) == {}
