"""Fusion: our `cat` and `svd` on adapter tensors vs PEFT `add_weighted_adapter` on a model."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

from bench.report import Section
from bench.shapes import LLAMA3_8B, SMOLLM2, LlamaShape, random_adapter, tiny_llama_config
from bench.timing import median_time
from mta.fusion import fuse
from mta.lora import LoraAdapter

RANK = 8
SVD_RANK = 16


def _weights(n: int) -> list[float]:
    raw = [float(n - i) for i in range(n)]
    return [w / sum(raw) for w in raw]


def _dense_target(
    anchors: Sequence[LoraAdapter], weights: Sequence[float], paths: Sequence[str]
) -> dict[str, torch.Tensor]:
    return {
        p: sum(w * a.modules[p].delta() for a, w in zip(anchors, weights, strict=True))
        for p in paths
    }


def _max_err(deltas: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> float:
    return max(float((deltas[p] - target[p]).abs().max()) for p in target)


def _rel_fro(deltas: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> float:
    num = sum(float((deltas[p] - target[p]).norm() ** 2) for p in target)
    den = sum(float(target[p].norm() ** 2) for p in target)
    return (num / den) ** 0.5


def _optimal_rel_fro(target: dict[str, torch.Tensor], rank: int) -> float:
    """The best achievable relative Frobenius error of a rank-``rank`` truncation."""
    num = den = 0.0
    for t in target.values():
        s = torch.linalg.svdvals(t.double())
        num += float((s[rank:] ** 2).sum())
        den += float((s**2).sum())
    return (num / den) ** 0.5


def _peft_model(shape: LlamaShape, anchors: Sequence[LoraAdapter]):
    """A random-weight model of ``shape`` carrying the anchors as PEFT adapters a0..aN."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(shape))
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=targets)
    peft_model = get_peft_model(model, config, adapter_name="a0")
    for i in range(1, len(anchors)):
        peft_model.add_adapter(f"a{i}", config)
    prefix = "base_model.model."
    for name, module in peft_model.named_modules():
        if not hasattr(module, "lora_A") or not name.startswith(prefix):
            continue
        path = name[len(prefix) :]
        for i, anchor in enumerate(anchors):
            if f"a{i}" in module.lora_A:
                module.lora_A[f"a{i}"].weight.data.copy_(anchor.modules[path].A)
                module.lora_B[f"a{i}"].weight.data.copy_(anchor.modules[path].B)
    return peft_model


def _peft_fuse(peft_model, n: int, weights: Sequence[float], kind: str) -> None:
    names = [f"a{i}" for i in range(n)]
    if "fused" in peft_model.peft_config:
        peft_model.delete_adapter("fused")
    extra = {"svd_rank": SVD_RANK} if kind == "svd" else {}
    peft_model.add_weighted_adapter(names, list(weights), "fused", combination_type=kind, **extra)


def _peft_deltas(peft_model, paths: Sequence[str]) -> dict[str, torch.Tensor]:
    prefix = "base_model.model."
    modules = dict(peft_model.named_modules())
    return {p: modules[prefix + p].get_delta_weight("fused").float() for p in paths}


def bench_fusion(quick: bool) -> Section:
    """Time and error of fusing rank-8 anchors, ours vs PEFT, at SmolLM2 and Llama-3-8B shapes."""
    section = Section(
        "Fusion of rank-8 anchors",
        ["shape", "anchors", "method", "median s", "vs PEFT cat", "max abs err", "rel. Fro err"],
    )
    counts = [2] if quick else [2, 4, 8]
    repeats = 1 if quick else 3
    shapes = SMOLLM2.linear_shapes()
    layer0 = [p for p in shapes if p.startswith("model.layers.0.")]
    for n in counts:
        anchors = [random_adapter(shapes, RANK, seed=i) for i in range(n)]
        weights = _weights(n)
        target = _dense_target(anchors, weights, list(shapes))
        target0 = {p: target[p] for p in layer0}
        peft_model = _peft_model(SMOLLM2, anchors)
        t_peft_cat = median_time(partial(_peft_fuse, peft_model, n, weights, "cat"), repeats)
        peft_cat = _peft_deltas(peft_model, list(shapes))
        t_peft_svd = median_time(partial(_peft_fuse, peft_model, n, weights, "svd"), repeats)
        peft_svd = _peft_deltas(peft_model, list(shapes))
        t_cat = median_time(partial(fuse, anchors, weights, method="cat"), repeats + 2)
        ours_cat = fuse(anchors, weights, method="cat")
        cat_deltas = {p: m.delta() for p, m in ours_cat.modules.items()}
        t_svd = median_time(partial(fuse, anchors, weights, method="svd", rank=SVD_RANK), repeats)
        ours_svd = fuse(anchors, weights, method="svd", rank=SVD_RANK)
        svd_deltas = {p: m.delta() for p, m in ours_svd.modules.items()}
        rows = [
            ("ours cat", t_cat, cat_deltas),
            ("PEFT cat", t_peft_cat, peft_cat),
            (f"ours svd r{SVD_RANK}", t_svd, svd_deltas),
            (f"PEFT svd r{SVD_RANK}", t_peft_svd, peft_svd),
        ]
        for method, seconds, deltas in rows:
            section.add(
                SMOLLM2.name,
                n,
                method,
                seconds,
                t_peft_cat / seconds,
                _max_err(deltas, target),
                _rel_fro(deltas, target0),
            )
        if n * RANK > SVD_RANK:
            section.notes.append(
                f"{n} anchors: optimal rank-{SVD_RANK} rel. Fro error on layer 0 = "
                f"{_optimal_rel_fro(target0, SVD_RANK):.4g}; PEFT svd takes "
                f"{t_peft_svd / t_svd:.1f}x the time of ours"
            )
    _llama_rows(section, [2] if quick else [2, 8], repeats)
    section.notes.append(
        "Errors are against the dense Σ w_i s_i B_i A_i: max abs err over all modules, relative "
        "Frobenius error on layer 0 (Llama-3-8B: layer 0 only for both)."
    )
    return section


def _llama_rows(section: Section, counts: Sequence[int], repeats: int) -> None:
    shapes = LLAMA3_8B.linear_shapes()
    layer0 = [p for p in shapes if p.startswith("model.layers.0.")]
    for n in counts:
        anchors = [random_adapter(shapes, RANK, seed=100 + i) for i in range(n)]
        weights = _weights(n)
        target0 = _dense_target(anchors, weights, layer0)
        t_cat = median_time(partial(fuse, anchors, weights, method="cat"), repeats)
        fused = fuse(anchors, weights, method="cat")
        cat0 = {p: fused.modules[p].delta() for p in layer0}
        svd_fn = partial(fuse, anchors, weights, method="svd", rank=SVD_RANK)
        t_svd = median_time(svd_fn, 1, warmup=0)
        svd = fuse(anchors, weights, method="svd", rank=SVD_RANK)
        svd0 = {p: svd.modules[p].delta() for p in layer0}
        section.add(
            LLAMA3_8B.name,
            n,
            "ours cat",
            t_cat,
            float("nan"),
            _max_err(cat0, target0),
            _rel_fro(cat0, target0),
        )
        section.add(
            LLAMA3_8B.name,
            n,
            f"ours svd r{SVD_RANK}",
            t_svd,
            float("nan"),
            _max_err(svd0, target0),
            _rel_fro(svd0, target0),
        )
