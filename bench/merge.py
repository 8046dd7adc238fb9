"""The fused merge around each user's training: one pristine copy vs a clone per call (#21)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from bench.report import Section
from bench.shapes import random_adapter
from bench.timing import median_time
from mta.inference import apply_adapter
from mta.lora import LoraAdapter

FUSED_RANK = 16  # the default top-2 fusion of rank-8 anchors


@contextmanager
def _clone_per_call(model: torch.nn.Module, adapter: LoraAdapter) -> Iterator[None]:
    """The baseline: `apply_adapter` before #21 cloned every targeted weight on each call."""
    saved = []
    try:
        with torch.no_grad():
            for path, module in adapter.modules.items():
                weight = model.get_submodule(path).weight
                saved.append((weight, weight.detach().clone()))
                weight.add_(module.delta().to(dtype=weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)


def bench_merge(quick: bool) -> Section:
    """Seconds to merge a user's fused adapter into SmolLM2 and restore it, both ways."""
    from mta.base_model import DEFAULT_TARGET_MODULES, linear_shapes, load_base_model

    repeats = 3 if quick else 9
    model, _ = load_base_model()
    adapter = random_adapter(linear_shapes(model, DEFAULT_TARGET_MODULES), FUSED_RANK, seed=0)

    def baseline() -> None:
        with _clone_per_call(model, adapter):
            pass

    def kept() -> None:
        with apply_adapter(model, adapter):
            pass

    t_base = median_time(baseline, repeats)
    t_kept = median_time(kept, repeats)  # the warm-up call makes the pristine copies
    section = Section(
        f"Merging a user's fused adapter (rank {FUSED_RANK}, all 7 modules × 30 layers of SmolLM2) "
        "into the base and restoring it",
        ["path", "median s per user", "clone per call / this"],
    )
    section.add(
        "apply_adapter: restore from one pristine copy kept per model", t_kept, t_base / t_kept
    )
    section.add("baseline: clone every targeted weight per call (before #21)", t_base, 1.0)
    kept_mb = sum(m.out_features * m.in_features for m in adapter.modules.values()) * 4 / 1e6
    section.notes.append(
        f"Every user's training and every evaluated adapter merge once. The pristine copies cost "
        f"{kept_mb:.0f} MB of memory once per model (fp32 weights of the targeted modules); both "
        "paths restore bit-exactly (tests/mta/test_training.py)."
    )
    return section
