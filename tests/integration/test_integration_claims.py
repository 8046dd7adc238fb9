"""Per-user claims on real PostgreSQL (+ S3): two bulk jobs at once train each user once.

Issue #22: `mta user adapt --all & mta user adapt --all` stored two stacks for 7 of 8
users on PostgreSQL + S3. Also the claim races themselves (many connections, one winner)
and the claims migration, on PostgreSQL's own locking and DDL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from tests.support import (
    TASK,
    CliEnv,
    Mta,
    movie_user,
    mta_command,
    ok,
    open_registry,
    push_bank_argv,
    run_together,
    write_users,
)

pytestmark = pytest.mark.integration

TRAIN = ("--shots", "2", "--max-steps", "1")


def _rows(db_url: str, sql: str) -> list[tuple]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(text(sql))]
    finally:
        engine.dispose()


def test_two_bulk_adapts_at_once_on_postgres_train_each_user_once(
    remote_env: CliEnv, mta: Mta, tiny_shapes: dict
) -> None:
    ok(mta(*push_bank_argv(remote_env, tiny_shapes)))
    user_ids = [f"c{i}" for i in range(8)]
    users = write_users(
        remote_env.root / "users.json", [movie_user(u, 6, seed=2) for u in user_ids]
    )
    ok(mta("user", "add", "--from", users, "--bank", TASK, "--json"))
    argv = mta_command("user", "adapt", "--all", *TRAIN, "--json")
    first, second = (json.loads(o) for o in run_together([argv, argv], remote_env.env()))
    counts = dict(_rows(remote_env.db_url, "SELECT user_id, COUNT(*) FROM stacks GROUP BY user_id"))
    assert counts == dict.fromkeys(user_ids, 1)
    assert sorted(first["done"] + second["done"]) == user_ids
    for report, other in ((first, second), (second, first)):
        assert report["failed"] == []
        assert sorted(report["busy"] + report["skipped"]) == sorted(other["done"])
    assert _rows(remote_env.db_url, "SELECT user_id FROM claims") == []
    assert ok(mta("fsck", "--json"))["ok"] is True


@pytest.fixture
def pg_registry(tmp_path: Path, pg_db_url: str) -> Iterator:
    """A PostgreSQL registry (file store) with no bank: claims need no users."""
    ctx = open_registry(tmp_path / "reg", db_url=pg_db_url)
    yield ctx
    ctx.close()


def _race(ctx, user_id: str, jobs: int) -> list[object]:
    """`jobs` threads, each on its own connection, claim `user_id` at once."""
    from mta.registry.context import RegistryContext
    from mta.registry.jobs.claims import Claimant, take_claim

    contexts = [RegistryContext.open(ctx.db_url, ctx.store_url, ctx.cache_dir) for _ in range(3)]
    barrier = threading.Barrier(jobs)
    results: list[object] = ["unset"] * jobs

    def race(n: int) -> None:
        barrier.wait()
        results[n] = take_claim(contexts[n % 3], user_id, Claimant(f"{n:032x}", "adapt"))

    threads = [threading.Thread(target=race, args=(n,)) for n in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for context in contexts:
        context.close()
    return results


def test_claim_races_on_postgres_have_one_winner(pg_registry) -> None:
    from mta.registry.jobs.claims import Claimant, drop_expired_claims, host_id, take_claim
    from mta.registry.models import SqlClaim, utcnow

    fresh = _race(pg_registry, "hot", 8)  # INSERT ... ON CONFLICT DO NOTHING
    assert sum(r is None for r in fresh) == 1 and "unset" not in fresh
    with pg_registry.session() as session:
        row = session.get_one(SqlClaim, "hot")
        row.expires_at = utcnow() - timedelta(seconds=1)  # its job died a lease ago
    expired = _race(pg_registry, "hot", 8)  # the conditional UPDATE: one takes it over
    assert sum(r is None for r in expired) == 1
    with pg_registry.read_session() as session:
        winner = session.get_one(SqlClaim, "hot")
        assert winner.expires_at > utcnow() + timedelta(minutes=9)  # the database's clock
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with pg_registry.session() as session:
        session.get_one(SqlClaim, "hot").host = host_id()
        session.get_one(SqlClaim, "hot").pid = dead.pid  # a killed job of this machine
    assert take_claim(pg_registry, "hot", Claimant("b" * 32, "fuse")) is None
    holder = take_claim(pg_registry, "hot", Claimant("c" * 32, "adapt"))
    assert holder is not None and holder.job_id == "b" * 32 and holder.kind == "fuse"
    with pg_registry.session() as session:
        session.get_one(SqlClaim, "hot").expires_at = utcnow() - timedelta(seconds=1)
    assert drop_expired_claims(pg_registry) == 1
    with pg_registry.read_session() as session:
        assert session.scalar(select(func.count()).select_from(SqlClaim)) == 0


def test_the_claims_migration_goes_up_and_down_on_postgres(pg_db_url: str) -> None:
    from alembic import command

    from mta.registry.db import alembic_config, current_revision, make_engine, table_names, upgrade

    engine = make_engine(pg_db_url)
    try:
        assert upgrade(engine) == "0003" and "claims" in table_names(engine)
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0002")
        assert current_revision(engine) == "0002" and "claims" not in table_names(engine)
        assert upgrade(engine) == "0003" and "claims" in table_names(engine)
    finally:
        engine.dispose()
