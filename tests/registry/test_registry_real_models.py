"""The registry flow on the real defaults: SmolLM2-135M, all-MiniLM-L6-v2 and real LaMP users."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mta.registry.context import RegistryContext
from mta.registry.service import (
    AdaptRequest,
    adapt_user,
    adapter_identity,
    add_user,
    build_bank,
    export_user,
    fuse_user,
    get_bank,
    storage_report,
)

pytestmark = pytest.mark.slow

TASK = "movie_tagging"


def _lamp_users() -> Path:
    from mta.lamp_data import find_task_data

    path = find_task_data(TASK)
    shared = Path(__file__).resolve().parents[3] / "shared" / "lamp" / TASK / "users.json"
    if path is None and shared.is_file():
        path = shared
    if path is None:
        pytest.skip("no LaMP movie_tagging users: set MTA_LAMP_DIR")
    return path


def test_build_fuse_adapt_export_on_smollm2(registry: RegistryContext, tmp_path: Path):
    users = json.loads(_lamp_users().read_text())
    pool, newcomer = users[:12], users[-1]
    data = tmp_path / "pool.json"
    data.write_text(json.dumps(pool))

    bank = build_bank(registry, task=TASK, data_path=data, anchors=2, max_steps=1)
    assert (bank.base_model, bank.embedder, bank.num_anchors) == (
        "smollm2",
        "all-MiniLM-L6-v2",
        2,
    )
    assert get_bank(registry, TASK).config["embedding_dim"] == 384

    add_user(registry, user_id="newcomer", task=TASK, profile=newcomer)
    recipe = fuse_user(registry, "newcomer")
    assert sum(a.weight for a in recipe.anchors) == pytest.approx(1.0)
    stack = adapt_user(registry, "newcomer", AdaptRequest(shots=2, max_steps=1))
    # A rank-1 stack on all seven SmolLM2 projections (30 layers): ~0.65 MB in fp16, ~0.32
    # MB in the default int8 (packed blob, docs/benchmarks.md "Bytes per user").
    assert stack.dtype == "int8" and 0.25e6 < stack.bytes < 0.4e6
    export = export_user(registry, adapter_identity(registry, "newcomer"), tmp_path / "out")
    assert export.rank == 17 and (tmp_path / "out" / "adapter_model.safetensors").is_file()

    report = storage_report(registry)
    # One rank-8 fp16 LoRA on SmolLM2's seven projections is ~4.9 MB; this user stores far less.
    assert report["oppu_equivalent_bytes"] == pytest.approx(4.88e6, rel=0.02)
    assert report["ratio_per_user_vs_oppu"] < 0.2
