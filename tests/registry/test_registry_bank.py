"""Bank versions: push, list, show, aliases, immutability and input validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mta.errors import AdapterFormatError, ShapeMismatchError
from mta.registry.errors import ImmutableError, InvalidInputError, NotFoundError
from mta.registry.service import get_bank, init_registry, list_banks, set_alias
from tests.support import ANCHOR_IDS, TASK, movie_user, push_folders, write_anchor_bank, write_users


def test_push_publishes_version_one_with_every_anchor(bank_registry, tiny_shapes):
    (bank,) = list_banks(bank_registry)
    assert (bank.task, bank.version, bank.num_anchors, bank.rank) == (TASK, 1, 4, 8)
    assert bank.source == "push" and bank.anchor_data == "pushed" and bank.is_latest
    assert set(bank.target_modules) == {p.rsplit(".", 1)[-1] for p in tiny_shapes}
    detail = get_bank(bank_registry, TASK)
    assert [a.anchor_id for a in detail.anchors] == list(ANCHOR_IDS)
    assert all(a.adapter_bytes > 0 and a.history_length == 8 for a in detail.anchors)
    assert detail.config["num_linear_modules"] == len(tiny_shapes)
    assert detail.total_bytes > sum(a.adapter_bytes for a in detail.anchors)
    assert detail.to_dict()["anchors"][0]["anchor_id"] == "a1"


def test_bank_adapters_are_stored_fp16_and_match_the_pushed_folders(bank_registry, tmp_path):
    from mta.adapter_blob import adapter_from_bytes
    from mta.peft_io import load_peft_adapter

    detail = get_bank(bank_registry, TASK)
    stored = adapter_from_bytes(bank_registry.store.get_bytes(detail.anchors[0].adapter_blob))
    pushed = load_peft_adapter(tmp_path / "anchors-0" / "a1")
    path = next(iter(pushed.modules))
    assert stored.modules[path].A.dtype == torch.float16
    torch.testing.assert_close(
        stored.modules[path].delta(), pushed.modules[path].delta(), rtol=2e-2, atol=1e-4
    )


def test_new_push_is_a_new_version_and_old_ones_stay(bank_registry, push_bank_fn):
    second = push_bank_fn(bank_registry, seed=1)
    assert second.version == 2 and second.is_latest
    versions = {b.version: b for b in list_banks(bank_registry)}
    assert not versions[1].is_latest
    assert get_bank(bank_registry, TASK, "1").anchors != get_bank(bank_registry, TASK, "v2").anchors


def test_alias_moves_between_versions(bank_registry, push_bank_fn):
    push_bank_fn(bank_registry, seed=1)
    assert set_alias(bank_registry, TASK, 1, "prod").aliases == ("prod",)
    assert get_bank(bank_registry, TASK, "prod").version == 1
    set_alias(bank_registry, TASK, 2, "prod")
    assert get_bank(bank_registry, TASK, "prod").version == 2
    by_version = {b.version: b.aliases for b in list_banks(bank_registry)}
    assert by_version == {1: (), 2: ("prod",)}


def test_unknown_refs_name_what_exists(bank_registry):
    set_alias(bank_registry, TASK, 1, "prod")
    with pytest.raises(NotFoundError, match="v1, prod"):
        get_bank(bank_registry, TASK, "staging")
    with pytest.raises(NotFoundError, match="no bank for task 'citation'"):
        get_bank(bank_registry, "citation")
    with pytest.raises(NotFoundError):
        set_alias(bank_registry, TASK, 7, "prod")
    with pytest.raises(InvalidInputError):
        set_alias(bank_registry, TASK, 1, "latest")


def test_versions_are_immutable(bank_registry):
    from sqlalchemy import select

    from mta.registry.models import SqlBank

    with pytest.raises(ImmutableError), bank_registry.session() as session:
        row = session.scalars(select(SqlBank)).one()
        row.rank = 4
        session.flush()
    assert list_banks(bank_registry)[0].rank == 8


def _folders(tmp_path: Path, shapes) -> tuple[list[Path], Path]:
    return write_anchor_bank(tmp_path / "in", shapes, ("x1", "x2"), items=8)


def test_push_refuses_pickle_weights(
    registry, tmp_path, tiny_shapes, tiny_model_dir, tiny_embedder_dir
):
    folders, profiles = _folders(tmp_path, tiny_shapes)
    weights = folders[0] / "adapter_model.safetensors"
    weights.rename(folders[0] / "adapter_model.bin")
    with pytest.raises(AdapterFormatError, match="bin"):
        push_folders(registry, folders, profiles, tiny_model_dir, tiny_embedder_dir)
    assert list_banks(registry) == []


def test_push_refuses_garbled_config_and_nan(
    registry, tmp_path, tiny_shapes, tiny_model_dir, tiny_embedder_dir
):
    from safetensors.torch import load_file, save_file

    folders, profiles = _folders(tmp_path, tiny_shapes)
    (folders[0] / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterFormatError):
        push_folders(registry, folders, profiles, tiny_model_dir, tiny_embedder_dir)
    folders, profiles = _folders(tmp_path / "b", tiny_shapes)
    weights = folders[1] / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    first = next(iter(tensors))
    tensors[first][0, 0] = float("nan")
    weights.unlink()
    save_file(tensors, str(weights))
    with pytest.raises(AdapterFormatError):
        push_folders(registry, folders, profiles, tiny_model_dir, tiny_embedder_dir)
    assert list_banks(registry) == []


def test_push_refuses_adapters_that_do_not_fit_the_base_model(
    registry, tmp_path, tiny_shapes, tiny_model_dir, tiny_embedder_dir
):
    wrong = {path: (out_f, in_f + 3) for path, (out_f, in_f) in tiny_shapes.items()}
    folders, profiles = _folders(tmp_path, wrong)
    with pytest.raises(ShapeMismatchError, match="x1"):
        push_folders(registry, folders, profiles, tiny_model_dir, tiny_embedder_dir)


def test_push_needs_a_profile_per_anchor_and_unique_names(
    registry, tmp_path, tiny_shapes, tiny_model_dir, tiny_embedder_dir
):
    folders, _ = _folders(tmp_path, tiny_shapes)
    only_one = write_users(tmp_path / "one.json", [movie_user("x1", 8)])
    with pytest.raises(InvalidInputError, match="x2"):
        push_folders(registry, folders, only_one, tiny_model_dir, tiny_embedder_dir)
    twice = [folders[0], folders[0]]
    with pytest.raises(InvalidInputError, match="unique"):
        push_folders(registry, twice, only_one, tiny_model_dir, tiny_embedder_dir)


def test_init_is_idempotent_and_keeps_data(bank_registry):
    again = init_registry(bank_registry)
    assert again["created"] is False and again["revision"] == again["previous_revision"]
    assert len(list_banks(bank_registry)) == 1
    assert json.dumps(again)


def _build(ctx, tmp_path, tiny_model_dir, tiny_embedder_dir, anchor_data: str, progress=None):
    from mta.registry.service import build_bank

    users = [movie_user(f"c{i}", 9 if i % 2 else 5, seed=i) for i in range(6)]
    data = write_users(tmp_path / f"users-{anchor_data}.json", users)
    return build_bank(
        ctx,
        task=TASK,
        data_path=data,
        anchors=2,
        anchor_data=anchor_data,
        min_history=8,
        base_model=str(tiny_model_dir),
        embedder=str(tiny_embedder_dir),
        max_steps=1,
        progress=progress,
    )


def test_build_trains_one_anchor_per_cluster_from_eligible_users(
    registry, tmp_path, tiny_model_dir, tiny_embedder_dir
):
    stages: list[tuple[str, int, int]] = []
    bank = _build(
        registry,
        tmp_path,
        tiny_model_dir,
        tiny_embedder_dir,
        "user",
        progress=lambda *event: stages.append(event),
    )
    assert (bank.version, bank.num_anchors, bank.anchor_data, bank.source) == (
        1,
        2,
        "user",
        "build",
    )
    detail = get_bank(registry, TASK)
    # Only users with >= min_history (8) items can be anchors: the odd-numbered ones.
    assert {a.anchor_id for a in detail.anchors} <= {"c1", "c3", "c5"}
    assert all(a.history_length == 9 for a in detail.anchors)
    assert sum(a.cluster_size for a in detail.anchors) == 3
    assert ("embed", 6, 6) in stages and ("train", 2, 2) in stages
    assert detail.config["train"]["max_steps"] == 1


def test_build_with_cluster_data_uses_the_cluster_mean_embedding(
    registry, tmp_path, tiny_model_dir, tiny_embedder_dir
):
    import numpy as np

    bank = _build(registry, tmp_path, tiny_model_dir, tiny_embedder_dir, "cluster")
    assert bank.anchor_data == "cluster"
    # Whose history trained each anchor is recorded, so deleting a member finds the anchor.
    members = get_bank(registry, TASK).config["anchor_members"]
    assert sorted(m for group in members.values() for m in group) == [f"c{i}" for i in (1, 3, 5)]
    for anchor in get_bank(registry, TASK).anchors:
        vector = np.frombuffer(registry.store.get_bytes(anchor.embedding_blob), dtype=np.float32)
        assert np.isclose(np.linalg.norm(vector), 1.0, atol=1e-5)


def test_build_refuses_impossible_requests(registry, tmp_path, tiny_model_dir, tiny_embedder_dir):
    from mta.registry.service import build_bank

    data = write_users(tmp_path / "few.json", [movie_user("s1", 3), movie_user("s2", 3)])
    with pytest.raises(InvalidInputError, match="min-history"):
        build_bank(
            registry,
            task=TASK,
            data_path=data,
            anchors=2,
            base_model=str(tiny_model_dir),
            embedder=str(tiny_embedder_dir),
        )
    with pytest.raises(InvalidInputError, match="anchor data"):
        build_bank(registry, task=TASK, data_path=data, anchors=1, anchor_data="pooled")
    assert list_banks(registry) == []
