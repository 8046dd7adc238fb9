"""Forgetting a user: resumable after a kill at any step, nothing of them survives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from mta.registry.context import RegistryContext
from mta.registry.errors import AlreadyExistsError, InvalidInputError, NotFoundError
from mta.registry.models import SqlDeletion, SqlRecipe, SqlStack
from mta.registry.service import (
    AdaptRequest,
    FuseRequest,
    adapt_user,
    adapter_identity,
    add_user,
    delete_user,
    export_user,
    fsck,
    fuse_user,
    get_bank,
    get_user,
)
from mta.registry.users.delete import user_cache_prefix
from mta.registry.users.export import cache_key
from mta.storage import StorageError
from tests.support import TASK, movie_user

# Deletes USER and SIGKILLs itself right after step STEP (as `kill -9` would, mid-way).
KILLER = """
import os, signal, sys
from mta.registry.context import RegistryContext
from mta.registry.service import delete_user
db, store, cache, user, step = sys.argv[1:6]
def crash(stage, done, total):
    if done == int(step):
        os.kill(os.getpid(), signal.SIGKILL)
ctx = RegistryContext.open(db, store, cache)
delete_user(ctx, user, progress=crash)
"""


def _traces(ctx: RegistryContext, user_id: str, blobs: set[str]) -> list[str]:
    """Everything of the user still stored anywhere (empty when they are forgotten)."""
    found = [f"blob {d}" for d in blobs if ctx.store.exists(d)]
    prefix = user_cache_prefix(user_id)
    found += [f"cache {n}" for n in ctx.adapter_cache.names() if prefix in n]
    with ctx.session() as session:
        for model in (SqlRecipe, SqlStack):
            found += [
                f"{model.__tablename__} row"
                for _ in session.scalars(select(model.id).where(model.user_id == user_id))
            ]
        if session.get(SqlDeletion, user_id) is not None:
            found.append("tombstone")
    return found


def _user_with_everything(ctx: RegistryContext, user_id: str) -> set[str]:
    """A user with a stack, an export-cache entry and a crashed export's staging folder."""
    add_user(ctx, user_id=user_id, task=TASK, profile=movie_user(user_id, 6))
    adapt_user(ctx, user_id, AdaptRequest(shots=2, max_steps=1))
    export_user(ctx, adapter_identity(ctx, user_id), None)
    key = cache_key(adapter_identity(ctx, user_id), max_rank=4, dtype="fp32")
    with ctx.adapter_cache.staging(key) as stage:
        (stage / "adapter_model.safetensors").write_bytes(b"half an adapter")
        stage.rename(stage.with_name(stage.name + "-crashed"))
        stage.mkdir()
    detail = get_user(ctx, user_id)
    return {detail.profile_blob, detail.embedding_blob, detail.stack.blob}


@pytest.mark.parametrize("step", [1, 2, 3, 4, 5, 6])
def test_delete_killed_at_any_step_is_finished_by_a_rerun(bank_registry, tmp_path, step):
    ctx = bank_registry
    blobs = _user_with_everything(ctx, "kim")
    add_user(ctx, user_id="kept", task=TASK, profile=movie_user("kept", 6))
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLER,
            ctx.db_url,
            ctx.store_url,
            str(ctx.cache_dir),
            "kim",
            str(step),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -9, child.stderr[-2000:]
    with pytest.raises(NotFoundError):
        get_user(ctx, "kim")  # from the first step on, the user is gone for readers
    with pytest.raises(NotFoundError):
        export_user(ctx, adapter_identity(ctx, "kim"), None)
    try:
        delete_user(ctx, "kim")  # the re-run finishes the job
    except NotFoundError:
        assert step == 6  # killed after its last step: nothing was left to do
    assert _traces(ctx, "kim", blobs) == []
    assert fsck(ctx).ok and get_user(ctx, "kept").user_id == "kept"


def test_gc_finishes_an_interrupted_deletion(bank_registry):
    from mta.registry.service import gc

    blobs = _user_with_everything(bank_registry, "lou")
    with pytest.raises(KeyboardInterrupt):
        delete_user(bank_registry, "lou", progress=_interrupt_at(1))
    result = gc(bank_registry)
    assert result.deletions_finished == ("lou",)
    assert _traces(bank_registry, "lou", blobs) == []


def _interrupt_at(step: int):
    def progress(_stage: str, done: int, _total: int) -> None:
        if done == step:
            raise KeyboardInterrupt

    return progress


def test_a_blob_already_missing_is_nothing_to_remove(bank_registry):
    blobs = _user_with_everything(bank_registry, "max")
    bank_registry.store.delete(get_user(bank_registry, "max").stack.blob)
    result = delete_user(bank_registry, "max")
    assert result.rows_deleted == 3
    assert _traces(bank_registry, "max", blobs) == []


def test_re_adding_an_id_waits_for_its_pending_deletion(bank_registry):
    _user_with_everything(bank_registry, "ned")
    with pytest.raises(KeyboardInterrupt):
        delete_user(bank_registry, "ned", progress=_interrupt_at(1))
    with pytest.raises(AlreadyExistsError, match="deletion of user 'ned' is pending"):
        add_user(bank_registry, user_id="ned", task=TASK, profile=movie_user("ned", 6))
    delete_user(bank_registry, "ned")
    add_user(bank_registry, user_id="ned", task=TASK, profile=movie_user("ned", 6))


def test_a_read_only_store_changes_nothing(bank_registry, tmp_path):
    store_root = Path(bank_registry.store.root)
    _user_with_everything(bank_registry, "ola")
    before = sorted(p.name for p in store_root.rglob("*"))
    cache_before = sorted(bank_registry.adapter_cache.names())
    mounted = subprocess.run(["mount", "--bind", str(store_root), str(store_root)])
    if mounted.returncode != 0:
        pytest.skip("cannot bind-mount here to make the store read-only")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(store_root)], check=True)
        with pytest.raises(StorageError, match="not writable"):
            delete_user(bank_registry, "ola")
    finally:
        subprocess.run(["umount", str(store_root)], check=True)
    assert get_user(bank_registry, "ola").stack is not None
    assert sorted(p.name for p in store_root.rglob("*")) == before
    assert sorted(bank_registry.adapter_cache.names()) == cache_before
    delete_user(bank_registry, "ola")


def test_an_export_racing_a_delete_leaves_no_cache_entry(bank_registry, monkeypatch):
    from mta.registry.users import export as service_export

    add_user(bank_registry, user_id="pia", task=TASK, profile=movie_user("pia", 6))
    fuse_user(bank_registry, "pia")
    real = service_export._materialize_into_cache

    def delete_meanwhile(ctx, *args, **kwargs):
        delete_user(ctx, "pia")  # the whole deletion runs while the export is building
        return real(ctx, *args, **kwargs)

    monkeypatch.setattr(service_export, "_materialize_into_cache", delete_meanwhile)
    with pytest.raises(NotFoundError, match="no user 'pia'"):
        export_user(bank_registry, adapter_identity(bank_registry, "pia"), None)
    assert not [n for n in bank_registry.adapter_cache.names() if user_cache_prefix("pia") in n]


def test_an_anchor_user_is_refused_then_dropped_from_every_version(bank_registry, push_bank_fn):
    push_bank_fn(bank_registry, seed=1)  # v2 has an anchor a1 too
    add_user(bank_registry, user_id="a1", task=TASK, profile=movie_user("a1", 8))
    add_user(bank_registry, user_id="bob", task=TASK, profile=movie_user("bob", 6))
    fuse_user(bank_registry, "bob", FuseRequest(top_k=4))  # fuses every anchor, a1 included
    adapt_user(bank_registry, "bob", AdaptRequest(shots=2, max_steps=1))
    a1_blobs = {
        d
        for version in ("1", "2")
        for a in get_bank(bank_registry, TASK, version).anchors
        if a.anchor_id == "a1"
        for d in (a.adapter_blob, a.embedding_blob)
    }
    with pytest.raises(InvalidInputError, match="--drop-anchor"):
        delete_user(bank_registry, "a1")
    assert get_user(bank_registry, "a1").user_id == "a1"  # refused: nothing changed

    result = delete_user(bank_registry, "a1", drop_anchors=True)
    assert set(result.anchors_dropped) == {f"{TASK} v1 a1", f"{TASK} v2 a1"}
    assert result.users_to_refuse == ("bob",)
    for version in ("1", "2"):
        bank = get_bank(bank_registry, TASK, version)
        assert [a.anchor_id for a in bank.anchors] == ["a2", "a3", "a4"]
        assert "redactions" in bank.config
    assert not [d for d in a1_blobs if bank_registry.store.exists(d)]
    assert get_user(bank_registry, "bob").recipe is None  # must fuse again
    recipe = fuse_user(
        bank_registry, "bob", FuseRequest(top_k=4)
    )  # the rebuilt index no longer knows a1
    assert {a.anchor_id for a in recipe.anchors} == {"a2", "a3", "a4"}
    assert fsck(bank_registry).ok


def test_concurrent_first_fuses_share_one_recipe(bank_registry):
    from concurrent.futures import ThreadPoolExecutor

    add_user(bank_registry, user_id="quin", task=TASK, profile=movie_user("quin", 6))
    with ThreadPoolExecutor(8) as pool:
        recipes = list(
            pool.map(lambda _: fuse_user(bank_registry, "quin", if_absent=True), range(8))
        )
    assert len({r.recipe_id for r in recipes}) == 1
    assert get_user(bank_registry, "quin").num_recipes == 1


def test_parallel_first_adapts_share_one_recipe_and_gc_reclaims_the_extra_stacks(bank_registry):
    from concurrent.futures import ThreadPoolExecutor

    from mta.registry.service import gc

    add_user(bank_registry, user_id="rex", task=TASK, profile=movie_user("rex", 6))
    with ThreadPoolExecutor(4) as pool:
        stacks = list(
            pool.map(
                lambda s: adapt_user(
                    bank_registry, "rex", AdaptRequest(shots=2, max_steps=1, seed=s)
                ),
                range(4),
            )
        )
    assert len({s.recipe_id for s in stacks}) == 1  # the first fuse won, the others reused it
    detail = get_user(bank_registry, "rex")
    assert (detail.num_recipes, detail.num_stacks) == (1, 4)
    result = gc(bank_registry, grace_seconds=0, retain_superseded_seconds=0)
    assert (result.superseded_stacks, result.superseded_recipes) == (3, 0)
    assert get_user(bank_registry, "rex").num_stacks == 1 and fsck(bank_registry).ok
