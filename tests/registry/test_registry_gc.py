"""gc reclaims superseded stacks and dead cache entries; every cached read is verified."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mta.registry.context import RegistryContext
from mta.registry.service import (
    AdaptRequest,
    FuseRequest,
    adapt_user,
    adapter_identity,
    add_user,
    export_user,
    fsck,
    fuse_user,
    gc,
    get_user,
)
from mta.storage import BlobCorruptedError
from tests.support import TASK, movie_user


def _flip(path: Path, offset: int = 100) -> None:
    """Flip one bit of a file (store blobs are read-only files)."""
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _add(ctx: RegistryContext, user_id: str) -> None:
    add_user(ctx, user_id=user_id, task=TASK, profile=movie_user(user_id, 6))


def test_gc_reclaims_superseded_stacks_and_recipes_after_the_retention(bank_registry, tmp_path):
    ctx = bank_registry
    _add(ctx, "rita")
    old = [adapt_user(ctx, "rita", AdaptRequest(shots=2, max_steps=1, seed=s)) for s in (0, 1)]
    fuse_user(ctx, "rita", FuseRequest(top_k=3))  # a new recipe: both stacks are superseded
    current = adapt_user(ctx, "rita", AdaptRequest(shots=2, max_steps=1))
    before = export_user(ctx, adapter_identity(ctx, "rita"), tmp_path / "before")

    kept = gc(ctx, grace_seconds=0)  # default retention: a week of rollback
    assert (kept.superseded_stacks, kept.superseded_recipes) == (0, 0)
    assert all(ctx.store.exists(s.blob) for s in old)

    result = gc(ctx, grace_seconds=0, retain_superseded_seconds=0)
    assert (result.superseded_stacks, result.superseded_recipes) == (2, 1)
    assert not any(ctx.store.exists(s.blob) for s in old)
    detail = get_user(ctx, "rita")
    assert (detail.num_stacks, detail.num_recipes, detail.stack) == (1, 1, current)
    after = export_user(ctx, adapter_identity(ctx, "rita"), tmp_path / "after")
    assert after.stack_id == before.stack_id
    assert (tmp_path / "after" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "before" / "adapter_model.safetensors"
    ).read_bytes()
    assert fsck(ctx).ok


def test_gc_sweeps_cache_entries_of_deleted_users_and_damaged_entries(bank_registry, tmp_path):
    ctx = bank_registry
    for user_id in ("sam", "tess"):
        _add(ctx, user_id)
        fuse_user(ctx, user_id)
    sam = export_user(ctx, adapter_identity(ctx, "sam"), None).cache_path
    tess = export_user(ctx, adapter_identity(ctx, "tess"), None).cache_path
    _flip(tess / "adapter_model.safetensors")
    ghost = ctx.adapter_cache.put("u0123456789abcdef--gone", sam)  # a user no longer here
    crashed = ctx.adapter_cache.root / ".tmp-u0123456789abcdef--gone-abc"
    crashed.mkdir()

    result = gc(ctx)
    assert result.cache_entries_removed == 3
    assert not ghost.exists() and not crashed.exists() and not tess.exists()
    assert ctx.adapter_cache.keys() == [sam.name]


def test_fsck_reports_a_damaged_cache_entry_and_export_rebuilds_it(bank_registry, caplog):
    ctx = bank_registry
    _add(ctx, "uma")
    fuse_user(ctx, "uma")
    cached = export_user(ctx, adapter_identity(ctx, "uma"), None).cache_path
    good = (cached / "adapter_model.safetensors").read_bytes()
    _flip(cached / "adapter_model.safetensors")

    report = fsck(ctx)
    assert not report.ok
    assert [(p.table, p.row, p.problem) for p in report.corrupt] == [
        ("cache", cached.name, "corrupt")
    ]
    with caplog.at_level("WARNING", logger="mta.storage.cache"):
        again = export_user(ctx, adapter_identity(ctx, "uma"), None)
    assert "discarded export-cache entry" in caplog.text
    assert not again.from_cache
    assert (again.cache_path / "adapter_model.safetensors").read_bytes() == good
    assert fsck(ctx).ok


@pytest.mark.parametrize("which", ["stack", "anchor"])
def test_a_warm_cache_does_not_hide_a_corrupt_source_blob(bank_registry, which):
    ctx = bank_registry
    _add(ctx, "vic")
    stack = adapt_user(ctx, "vic", AdaptRequest(shots=2, max_steps=1))
    assert not export_user(ctx, adapter_identity(ctx, "vic"), None).from_cache
    if which == "stack":
        digest = stack.blob
    else:
        from mta.registry.service import get_bank

        recipe = get_user(ctx, "vic").recipe
        anchors = {a.anchor_id: a.adapter_blob for a in get_bank(ctx, TASK).anchors}
        digest = anchors[recipe.anchors[0].anchor_id]
    _flip(ctx.store.path_for(digest))
    with pytest.raises(BlobCorruptedError):
        export_user(ctx, adapter_identity(ctx, "vic"), None)
