"""The core registry flows on a real PostgreSQL server and a real S3-compatible server."""

from __future__ import annotations

from pathlib import Path

import pytest

from mta.registry.context import RegistryContext
from mta.registry.db import head_revision
from mta.registry.errors import AlreadyExistsError
from mta.registry.service import (
    AdaptRequest,
    adapt_user,
    adapter_identity,
    add_user,
    delete_user,
    export_user,
    fsck,
    fuse_user,
    gc,
    get_bank,
    get_user,
    init_registry,
    list_banks,
    set_alias,
    storage_report,
)
from tests.support import TASK, check_parallel_adapt, movie_user, open_registry

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_registry(pg_db_url: str, s3_store_url: str, tmp_path: Path):
    """An initialized registry on PostgreSQL + S3."""
    ctx = open_registry(tmp_path / "pg", db_url=pg_db_url, store_url=s3_store_url)
    yield ctx
    ctx.close()


@pytest.fixture
def pg_bank_registry(pg_registry: RegistryContext, push_bank_fn) -> RegistryContext:
    """PostgreSQL + S3 registry with one pushed bank."""
    push_bank_fn(pg_registry)
    return pg_registry


def test_init_is_idempotent_on_postgres(pg_registry: RegistryContext):
    again = init_registry(pg_registry)
    assert again["created"] is False and again["revision"] == head_revision()
    assert "mta" not in again["db_url"].split("@")[0].split(":")[-1]  # password hidden


def test_core_flow_on_postgres_and_s3(pg_bank_registry: RegistryContext, push_bank_fn, tmp_path):
    ctx = pg_bank_registry
    user = add_user(ctx, user_id="pg-alice", task=TASK, profile=movie_user("pg-alice"))
    with pytest.raises(AlreadyExistsError):
        add_user(ctx, user_id="pg-alice", task=TASK, profile=movie_user("pg-alice"))
    recipe = fuse_user(ctx, "pg-alice")
    stack = adapt_user(ctx, "pg-alice", AdaptRequest(shots=2, max_steps=1))
    assert stack.recipe_id == recipe.recipe_id
    export = export_user(ctx, adapter_identity(ctx, "pg-alice"), tmp_path / "out")
    assert (tmp_path / "out" / "adapter_config.json").is_file() and export.rank == 17

    push_bank_fn(ctx, seed=1)
    set_alias(ctx, TASK, 1, "prod")
    assert get_bank(ctx, TASK, "prod").version == 1
    assert [b.version for b in list_banks(ctx)] == [1, 2]
    report = storage_report(ctx)
    assert report["users"] == 1 and report["stale_stacks"] == 1
    assert fsck(ctx).ok

    deleted = delete_user(ctx, "pg-alice")
    assert set(deleted.blobs_deleted) == {user.profile_blob, user.embedding_blob, stack.blob}
    assert not any(ctx.store.exists(d) for d in deleted.blobs_deleted)
    assert fsck(ctx).ok and gc(ctx, grace_seconds=0).deleted == ()


def test_fsck_on_s3_reports_a_missing_blob(pg_bank_registry: RegistryContext):
    ctx = pg_bank_registry
    user = add_user(ctx, user_id="pg-bob", task=TASK, profile=movie_user("pg-bob"))
    ctx.store.delete(user.embedding_blob)
    report = fsck(ctx)
    assert not report.ok
    assert [(p.table, p.row, p.column) for p in report.missing] == [
        ("users", "pg-bob", "embedding_blob")
    ]
    assert get_user(ctx, "pg-bob").user_id == "pg-bob"


def test_parallel_adapt_on_postgres(pg_bank_registry: RegistryContext, tmp_path: Path):
    check_parallel_adapt(pg_bank_registry, tmp_path)
