"""Tensor precision names, as flags and records spell them, and their torch dtypes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mta.errors import unknown_name

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("fp32", "fp16", "bf16")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of "fp32" | "fp16" | "bf16" (UnknownNameError lists the valid names)."""
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise unknown_name("dtype", name, DTYPE_NAMES)
    return table[name]
