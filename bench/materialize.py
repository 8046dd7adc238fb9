"""Materialization: `user export` cold (store) and warm (cache) vs a naive PEFT path."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.report import Section
from bench.shapes import random_adapter
from bench.timing import median_time
from mta.adapter_blob import adapter_to_bytes
from mta.peft_io import save_peft_adapter

ANCHORS = 8
TOP_K = 2


def _registry(root: Path, shapes: dict[str, tuple[int, int]]):
    """A registry with a bank of random SmolLM2-shaped anchors and one adapted user."""
    from mta.base_model import DEFAULT_TARGET_MODULES
    from mta.embedding import DEFAULT_EMBEDDER, Embedder
    from mta.registry.banks.versions import AnchorPayload, publish_bank
    from mta.registry.context import RegistryContext
    from mta.registry.service import (
        AdaptRequest,
        FuseRequest,
        adapt_user,
        add_user,
        fuse_user,
        init_registry,
    )

    ctx = RegistryContext.in_folder(root)
    init_registry(ctx)
    users = json.loads(
        (
            Path(__file__).resolve().parents[1] / "examples" / "data" / "movie_tagging_demo.json"
        ).read_text()
    )
    embedder = Embedder(DEFAULT_EMBEDDER)
    anchors = []
    for i in range(ANCHORS):
        texts = [item["description"] for item in users[i % len(users)]["profile"]]
        vector = embedder.encode(texts).mean(axis=0)
        vector = vector + np.random.default_rng(i).normal(0, 0.01, vector.shape)
        anchors.append(
            AnchorPayload(
                anchor_id=f"anchor{i}",
                adapter_bytes=adapter_to_bytes(random_adapter(shapes, 8, seed=i)),
                embedding=(vector / np.linalg.norm(vector)).astype(np.float32),
                history_length=10,
                cluster_size=1,
            )
        )
    publish_bank(
        ctx,
        task="movie_tagging",
        base_model="smollm2",
        embedder=DEFAULT_EMBEDDER,
        target_modules=DEFAULT_TARGET_MODULES,
        rank=8,
        anchor_data="user",
        config={"shapes": {p: list(s) for p, s in shapes.items()}},
        anchors=anchors,
    )
    user = users[-1]
    add_user(ctx, user_id="bench-user", task="movie_tagging", profile=user)
    fuse_user(ctx, "bench-user", FuseRequest(top_k=TOP_K))
    adapt_user(ctx, "bench-user", AdaptRequest(shots=4, rank=1, epochs=1, max_steps=1))
    return ctx, anchors


def bench_materialize(quick: bool) -> Section:
    """Latency of producing a user's PEFT folder: cold, warm, and PEFT add_weighted_adapter."""
    from mta.base_model import DEFAULT_TARGET_MODULES, linear_shapes, load_base_model
    from mta.registry.service import adapter_identity, export_user

    repeats = 2 if quick else 5
    model, _ = load_base_model()
    shapes = linear_shapes(model, DEFAULT_TARGET_MODULES)
    section = Section(
        f"Materialization of one user's adapter (SmolLM2, top-{TOP_K} of {ANCHORS} rank-8 anchors "
        "+ rank-1 stack)",
        ["path", "median s", "naive PEFT / this"],
    )
    with tempfile.TemporaryDirectory(prefix="mta-bench-") as tmp:
        root = Path(tmp)
        ctx, anchors = _registry(root, shapes)

        def export() -> None:
            export_user(ctx, adapter_identity(ctx, "bench-user"), None)

        def cold() -> None:
            ctx.adapter_cache.clear()
            export()

        t_cold = median_time(cold, repeats)
        export()
        t_warm = median_time(export, repeats)
        peft_dirs = []
        for i in range(TOP_K):
            from mta.adapter_blob import adapter_from_bytes

            adapter = adapter_from_bytes(anchors[i].adapter_bytes)
            peft_dirs.append(save_peft_adapter(adapter, root / f"peft{i}", dtype=torch.float16))
        t_naive = median_time(lambda: _naive_peft(model, peft_dirs, root / "naive"), repeats)
        ctx.close()
    section.add("mta export, cold (store → fuse → PEFT folder)", t_cold, t_naive / t_cold)
    section.add("mta export, warm (cache hit)", t_warm, t_naive / t_warm)
    section.add("naive PEFT (load anchors, add_weighted_adapter cat, save)", t_naive, 1.0)
    section.notes.append(
        "The naive path starts from a base model already in memory (as a server would keep it); "
        "our path needs no base model at all. Cold clears the export cache before each run."
    )
    return section


def _naive_peft(model: torch.nn.Module, dirs: list[Path], out: Path) -> None:
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(dirs[0]), adapter_name="a0")
    for i, folder in enumerate(dirs[1:], start=1):
        peft_model.load_adapter(str(folder), adapter_name=f"a{i}")
    names = [f"a{i}" for i in range(len(dirs))]
    peft_model.add_weighted_adapter(names, [0.6, 0.4][: len(dirs)], "fused", combination_type="cat")
    peft_model.save_pretrained(str(out), selected_adapters=["fused"])
    peft_model.unload()  # restore the plain base model for the next repeat
