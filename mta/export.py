"""Export: the fused adapter plus the user's stack as one standard LoRA."""

from __future__ import annotations

import torch

from mta.fusion.cat import CatFusion
from mta.fusion.svd import compress
from mta.lora import LoraAdapter


def stack_onto(fused: LoraAdapter, stack: LoraAdapter) -> LoraAdapter:
    """One LoRA whose delta is exactly ``fused + stack`` (rank R + r_stack, by concatenation).

    Raises:
        ShapeMismatchError: the two disagree on a module's shape.
    """
    combined = CatFusion().fuse([fused, stack], [1.0, 1.0])
    base_model = fused.base_model or stack.base_model
    return LoraAdapter(modules=combined.modules, base_model=base_model)


def pad_to_uniform_rank(adapter: LoraAdapter) -> LoraAdapter:
    """The same deltas with every module at the adapter's largest rank (zero rows/columns).

    Engines size their LoRA slots by one ``r`` (vLLM's ``--max-lora-rank``), and llama.cpp
    and LoRAX compute the scaling from one alpha and each tensor's rank: one rank and an
    empty ``rank_pattern`` load the same everywhere.
    """
    from mta.lora import LoraModule

    rank = max(adapter.ranks().values())
    modules = {}
    for path, module in adapter.modules.items():
        missing = rank - module.r
        if missing == 0:
            modules[path] = module
            continue
        a = torch.cat([module.A, module.A.new_zeros(missing, module.in_features)])
        b = torch.cat([module.B, module.B.new_zeros(module.out_features, missing)], dim=1)
        modules[path] = LoraModule(A=a, B=b, scale=module.scale)
    return LoraAdapter(modules=modules, base_model=adapter.base_model)


def export_adapter(
    fused: LoraAdapter, stack: LoraAdapter | None, *, max_rank: int | None = None
) -> LoraAdapter:
    """The adapter to hand to a serving engine: ``fused + stack``, one rank, optionally capped.

    Args:
        fused: The user's fused anchor adapter.
        stack: The user's trained stack, or None to export the fused adapter alone.
        max_rank: Cap every module's rank with the truncated SVD (for engines that
            limit LoRA rank); None keeps the exact concatenation.

    Returns:
        The exported adapter, factors in fp32, every module at one rank
        (`pad_to_uniform_rank`).

    Raises:
        ShapeMismatchError: fused and stack disagree on a module's shape.
        ValueError: ``max_rank`` is not a positive integer.
    """
    combined = stack_onto(fused, stack) if stack is not None else fused.to(torch.float32)
    capped = compress(combined, max_rank) if max_rank is not None else combined
    return pad_to_uniform_rank(capped)
