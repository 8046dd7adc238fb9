"""Validation and alignment of fusion inputs, shared by every fusion method."""

from __future__ import annotations

import math
from collections.abc import Sequence

from mta.errors import ShapeMismatchError
from mta.lora import LoraAdapter, LoraModule

# (weight, module) of each adapter that has the module, in adapter order.
WeightedModules = list[tuple[float, LoraModule]]


def check_weights(adapters: Sequence[LoraAdapter], weights: Sequence[float]) -> list[float]:
    """Validate fusion weights: one per adapter, finite, not all zero.

    Weights are used as given: they are not normalized, and negative weights are
    allowed (exact fusion handles them; e.g. subtracting an anchor's delta). The
    weight rules of ``mta.weighting`` only ever produce non-negative weights that
    sum to 1.

    Returns:
        The weights as Python floats.

    Raises:
        ValueError: no adapters, a count mismatch, a non-finite weight, or all zeros.
    """
    if not adapters:
        raise ValueError("fusion needs at least one adapter")
    values = [float(w) for w in weights]
    if len(values) != len(adapters):
        raise ValueError(f"got {len(values)} weights for {len(adapters)} adapters; need one each")
    if not all(math.isfinite(w) for w in values):
        raise ValueError(f"weights must be finite, got {values}")
    if not any(values):
        raise ValueError("weights are all zero; the fused adapter would be empty")
    return values


def align_modules(
    adapters: Sequence[LoraAdapter], weights: Sequence[float]
) -> dict[str, WeightedModules]:
    """Group each module path with the (weight, module) of every adapter that has it.

    A module missing from an adapter counts as a zero delta for that adapter, so it
    is simply left out of that path's list.

    Raises:
        ShapeMismatchError: two adapters disagree on a module's (out, in) shape.
    """
    aligned: dict[str, WeightedModules] = {}
    first_seen: dict[str, int] = {}
    for index, (adapter, weight) in enumerate(zip(adapters, weights, strict=True)):
        for path, module in adapter.modules.items():
            entries = aligned.setdefault(path, [])
            if entries:
                ref = entries[0][1]
                if (ref.out_features, ref.in_features) != (module.out_features, module.in_features):
                    raise ShapeMismatchError(
                        f"{path}: adapter {first_seen[path] + 1} is (out, in) = "
                        f"({ref.out_features}, {ref.in_features}), adapter {index + 1} is "
                        f"({module.out_features}, {module.in_features})"
                    )
            else:
                first_seen[path] = index
            entries.append((weight, module))
    return aligned


def common_base_model(adapters: Sequence[LoraAdapter]) -> str | None:
    """The base model name the adapters agree on, or None when unknown or conflicting."""
    names = {a.base_model for a in adapters if a.base_model}
    return names.pop() if len(names) == 1 else None
