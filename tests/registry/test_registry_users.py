"""User flows on the tiny model: add, fuse, adapt, export, stale stacks, delete."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mta.errors import UnknownNameError
from mta.registry.errors import AlreadyExistsError, InvalidInputError, NotFoundError
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
    list_users,
    set_alias,
    shot_indices,
    storage_report,
)
from tests.fixtures_model import TINY_EMBEDDER_DIM
from tests.support import TASK, all_file_bytes, movie_user


def _add(ctx, user_id: str, items: int = 6, seed: int = 0, **kwargs):
    return add_user(
        ctx, user_id=user_id, task=TASK, profile=movie_user(user_id, items, seed), **kwargs
    )


def _vector(ctx, digest: str) -> np.ndarray:
    return np.frombuffer(ctx.store.get_bytes(digest), dtype=np.float32)


def test_add_user_stores_profile_and_unit_embedding(bank_registry):
    user = _add(bank_registry, "alice@example.com")
    assert (user.user_id, user.task, user.bank_version, user.profile_items) == (
        "alice@example.com",
        TASK,
        1,
        6,
    )
    vector = _vector(bank_registry, user.embedding_blob)
    assert vector.shape == (TINY_EMBEDDER_DIM,)
    assert np.isclose(np.linalg.norm(vector), 1.0, atol=1e-5)
    assert [u.user_id for u in list_users(bank_registry, task=TASK)] == ["alice@example.com"]
    assert list_users(bank_registry, task="citation") == []


def test_add_user_refuses_bad_input(bank_registry):
    _add(bank_registry, "bob")
    with pytest.raises(AlreadyExistsError, match="bob"):
        _add(bank_registry, "bob")
    with pytest.raises(InvalidInputError, match="invalid user id"):
        _add(bank_registry, "../bob")
    with pytest.raises(InvalidInputError, match="profile"):
        add_user(bank_registry, user_id="carol", task=TASK, profile={"profile": []})
    with pytest.raises(InvalidInputError, match="tag"):
        add_user(
            bank_registry,
            user_id="carol",
            task=TASK,
            profile=[{"id": "1", "tag": "not-a-tag", "description": "x"}],
        )
    with pytest.raises(UnknownNameError):
        add_user(bank_registry, user_id="carol", task="nope", profile=movie_user("c"))
    with pytest.raises(NotFoundError, match="no bank"):
        add_user(
            bank_registry,
            user_id="carol",
            task="citation",
            profile=[{"id": "1", "title": "t", "abstract": "a"}],
        )
    assert [u.user_id for u in list_users(bank_registry)] == ["bob"]


def test_new_users_pin_prod_else_latest(bank_registry, push_bank_fn):
    push_bank_fn(bank_registry, seed=1)
    assert _add(bank_registry, "u-latest").bank_version == 2
    set_alias(bank_registry, TASK, 1, "prod")
    assert _add(bank_registry, "u-prod").bank_version == 1
    assert _add(bank_registry, "u-ref", bank_ref="2").bank_version == 2


def test_fuse_takes_the_true_nearest_anchors_with_proportional_weights(bank_registry):
    user = _add(bank_registry, "dave")
    recipe = fuse_user(bank_registry, "dave", FuseRequest(top_k=2))
    bank = get_bank(bank_registry, TASK)
    query = _vector(bank_registry, user.embedding_blob)
    cosines = {
        a.anchor_id: float(query @ _vector(bank_registry, a.embedding_blob)) for a in bank.anchors
    }
    best = sorted(cosines, key=cosines.get, reverse=True)[:2]
    assert [a.anchor_id for a in recipe.anchors] == best
    for anchor in recipe.anchors:
        assert anchor.score == pytest.approx(cosines[anchor.anchor_id], abs=1e-4)
    scores = [max(a.score, 0.0) for a in recipe.anchors]
    assert [a.weight for a in recipe.anchors] == pytest.approx([s / sum(scores) for s in scores])
    assert (recipe.method, recipe.weight_rule, recipe.bank_version) == ("cat", "proportional", 1)
    assert get_user(bank_registry, "dave").recipe == recipe


def test_fuse_caps_top_k_and_validates_names(bank_registry):
    _add(bank_registry, "erin")
    assert len(fuse_user(bank_registry, "erin", FuseRequest(top_k=10)).anchors) == 4
    with pytest.raises(UnknownNameError, match="cat"):
        fuse_user(bank_registry, "erin", FuseRequest(method="magic"))
    with pytest.raises(UnknownNameError, match="proportional"):
        fuse_user(bank_registry, "erin", FuseRequest(weight_rule="magic"))
    with pytest.raises(NotFoundError):
        fuse_user(bank_registry, "nobody")
    assert get_user(bank_registry, "erin").num_recipes == 1


def test_shot_indices_are_seeded_and_in_profile_order():
    assert shot_indices(6, 3, seed=0) == shot_indices(6, 3, seed=0)
    assert shot_indices(6, 3, seed=0) == sorted(shot_indices(6, 3, seed=0))
    assert len(set(shot_indices(6, 3, seed=1))) == 3
    assert shot_indices(4, 10, seed=0) == [0, 1, 2, 3]
    with pytest.raises(InvalidInputError):
        shot_indices(4, 0, seed=0)


def test_adapt_then_export_is_fused_plus_stack_exactly(bank_registry, tmp_path):
    from mta.adapter_blob import adapter_from_bytes
    from mta.peft_io import load_peft_adapter
    from mta.registry.users.export import materialize_fused

    _add(bank_registry, "frank")
    steps = []
    stack = adapt_user(
        bank_registry,
        "frank",
        AdaptRequest(shots=3, rank=1, epochs=1, batch_size=2),
        progress=lambda stage, done, total: steps.append((stage, done, total)),
    )
    assert (stack.rank, stack.dtype, stack.bank_version, stack.stale) == (1, "int8", 1, False)
    assert stack.train_config["shot_indices"] == shot_indices(6, 3, seed=0)
    assert stack.bytes == len(bank_registry.store.get_bytes(stack.blob))
    assert steps and steps[-1][1] == stack.train_config["steps"]
    assert stack.final_loss is not None and np.isfinite(stack.final_loss)
    detail = get_user(bank_registry, "frank")
    assert detail.recipe is not None and detail.stack == stack  # fused automatically

    out = export_user(bank_registry, adapter_identity(bank_registry, "frank"), tmp_path / "out")
    assert (out.rank, out.stack_id, out.from_cache) == (8 * 2 + 1, stack.stack_id, False)
    exported = load_peft_adapter(tmp_path / "out")
    stored_stack = adapter_from_bytes(bank_registry.store.get_bytes(stack.blob))
    identity = adapter_identity(bank_registry, "frank")
    assert (identity.recipe_id, identity.stack, identity.method) == (
        detail.recipe.recipe_id,
        stack.blob,
        "cat",
    )
    fused = materialize_fused(bank_registry, identity)
    for path in list(exported.modules)[:3]:
        expected = fused.modules[path].delta() + stored_stack.modules[path].delta()
        torch.testing.assert_close(exported.modules[path].delta(), expected, rtol=1e-4, atol=1e-6)

    again = export_user(bank_registry, adapter_identity(bank_registry, "frank"), tmp_path / "again")
    assert again.from_cache and again.cache_path == out.cache_path
    small = export_user(bank_registry, adapter_identity(bank_registry, "frank"), None, max_rank=4)
    assert small.rank == 4 and not small.from_cache and small.path == small.cache_path


def test_export_without_stack_is_the_fused_adapter(bank_registry, tmp_path):
    _add(bank_registry, "gina")
    with pytest.raises(NotFoundError, match="mta user fuse"):
        export_user(bank_registry, adapter_identity(bank_registry, "gina"), tmp_path / "x")
    fuse_user(bank_registry, "gina", FuseRequest(top_k=3))
    out = export_user(bank_registry, adapter_identity(bank_registry, "gina"), tmp_path / "x")
    assert out.stack_id is None and out.rank == 24


def test_a_new_bank_version_makes_stacks_stale(bank_registry, push_bank_fn):
    _add(bank_registry, "hank")
    adapt_user(bank_registry, "hank", AdaptRequest(shots=2, max_steps=1))
    assert storage_report(bank_registry)["stale_stacks"] == 0
    push_bank_fn(bank_registry, seed=1)
    assert get_user(bank_registry, "hank").stack.stale
    report = storage_report(bank_registry)
    assert (report["stale_stacks"], report["stale_users"]) == (1, ["hank"])


def test_delete_user_removes_every_byte_and_keeps_the_bank(bank_registry, tmp_path):
    store_root = tmp_path / "reg" / "store"
    bank_before = {p.name for p in (store_root).rglob("*") if p.is_file()}
    _add(bank_registry, "ivy@home")
    _add(bank_registry, "jack")
    before_ivy = all_file_bytes(store_root)
    adapt_user(bank_registry, "ivy@home", AdaptRequest(shots=2, max_steps=1))
    export_user(bank_registry, adapter_identity(bank_registry, "ivy@home"), None)
    fuse_user(bank_registry, "jack")
    jack_export = export_user(bank_registry, adapter_identity(bank_registry, "jack"), None)
    ivy = get_user(bank_registry, "ivy@home")
    ivy_blobs = {ivy.profile_blob, ivy.embedding_blob, ivy.stack.blob}

    result = delete_user(bank_registry, "ivy@home")
    assert set(result.blobs_deleted) == ivy_blobs and result.rows_deleted == 3
    assert result.bytes_freed == ivy.bytes
    remaining = {p.name for p in store_root.rglob("*") if p.is_file()}
    assert not remaining & ivy_blobs
    assert bank_before <= remaining  # bank blobs untouched
    assert all_file_bytes(store_root) <= before_ivy  # nothing of ivy's is left in the store
    with pytest.raises(NotFoundError):
        get_user(bank_registry, "ivy@home")
    assert get_user(bank_registry, "jack").user_id == "jack"
    assert fsck(bank_registry).ok
    assert result.cache_entries_deleted == 1
    assert bank_registry.adapter_cache.keys() == [jack_export.cache_path.name]


def test_delete_keeps_blobs_another_user_shares(bank_registry):
    a = add_user(bank_registry, user_id="twin-a", task=TASK, profile=movie_user("same", 6))
    b = add_user(bank_registry, user_id="twin-b", task=TASK, profile=movie_user("same", 6))
    # The stored profile carries its own user id, so only the embedding is shared.
    assert a.embedding_blob == b.embedding_blob and a.profile_blob != b.profile_blob
    result = delete_user(bank_registry, "twin-a")
    assert result.blobs_deleted == (a.profile_blob,)
    assert bank_registry.store.exists(b.embedding_blob)
    assert fsck(bank_registry).ok


def test_refusing_drops_the_current_stack_until_the_next_adapt(bank_registry, tmp_path):
    _add(bank_registry, "lena")
    first = adapt_user(bank_registry, "lena", AdaptRequest(shots=2, max_steps=1))
    recipe = fuse_user(bank_registry, "lena", FuseRequest(top_k=3))
    detail = get_user(bank_registry, "lena")
    # The old stack was trained on another fused delta: it is kept but no longer served.
    assert detail.recipe == recipe and detail.stack is None and detail.num_stacks == 1
    export = export_user(
        bank_registry, adapter_identity(bank_registry, "lena"), tmp_path / "fused-only"
    )
    assert (export.stack_id, export.recipe_id, export.rank) == (None, recipe.recipe_id, 24)
    second = adapt_user(bank_registry, "lena", AdaptRequest(shots=2, max_steps=1))
    assert second.recipe_id == recipe.recipe_id != first.recipe_id
    assert get_user(bank_registry, "lena").stack == second
    assert (
        export_user(bank_registry, adapter_identity(bank_registry, "lena"), None).stack_id
        == second.stack_id
    )
