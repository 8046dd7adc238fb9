"""Adapters as plain named tensors: one (A, B, scale) triple per target module.

A LoRA on a module computes ``ΔW = scale · B @ A`` with ``A`` of shape
``(r, in_features)`` and ``B`` of shape ``(out_features, r)``. Everything else in
the project (fusion, stacking, export, storage) works on these objects; PEFT
folders and blobs are only their serialized forms (see ``mta.peft_io``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from mta.errors import AdapterFormatError


@contextmanager
def one_thread() -> Iterator[None]:
    """Run many small tensor ops on one thread, restoring the caller's thread count after.

    Each op on an adapter-sized tensor is too small to gain from threads, and on a
    busy CPU every OpenMP parallel region can stall for milliseconds: measured on a
    loaded 2-core machine, 840 finiteness checks took 14 s with 2 threads and
    0.05 s with one, and truncating 210 rank-64 modules 12-20 s versus 0.7 s.
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def is_finite(tensor: torch.Tensor) -> bool:
    """Whether every entry is finite, in one pass without a boolean temporary.

    A float64 sum of fp32/fp16/bf16 values cannot overflow, so it is finite exactly
    when no entry is NaN or inf.
    """
    return math.isfinite(float(tensor.sum(dtype=torch.float64)))


@dataclass(frozen=True, eq=False)
class LoraModule:
    """The low-rank factors of one target module and its effective scaling.

    Equality is identity (``eq=False``): comparing tensors elementwise has no single truth value.
    """

    A: torch.Tensor  # (r, in_features)
    B: torch.Tensor  # (out_features, r)
    scale: float  # alpha / r, or alpha / sqrt(r) with rsLoRA, already resolved

    def __post_init__(self) -> None:
        if self.A.dim() != 2 or self.B.dim() != 2:
            raise AdapterFormatError(
                f"LoRA factors must be 2-D, got A {tuple(self.A.shape)} and B {tuple(self.B.shape)}"
            )
        if self.A.shape[0] != self.B.shape[1]:
            raise AdapterFormatError(
                f"LoRA rank mismatch: A has {self.A.shape[0]} rows, B has {self.B.shape[1]} columns"
            )
        if not math.isfinite(self.scale):
            raise AdapterFormatError(f"LoRA scale must be finite, got {self.scale}")

    @property
    def r(self) -> int:
        """The rank (rows of A)."""
        return int(self.A.shape[0])

    @property
    def in_features(self) -> int:
        """Input width of the adapted linear layer."""
        return int(self.A.shape[1])

    @property
    def out_features(self) -> int:
        """Output width of the adapted linear layer."""
        return int(self.B.shape[0])

    def delta(self) -> torch.Tensor:
        """The dense update ``scale · B @ A`` in fp32, shape (out_features, in_features)."""
        return (self.B.float() @ self.A.float()) * self.scale

    def num_params(self) -> int:
        """Number of stored factor entries."""
        return self.A.numel() + self.B.numel()

    def to(self, dtype: torch.dtype) -> LoraModule:
        """A copy whose factors have ``dtype``; the scale stays a Python float."""
        return LoraModule(A=self.A.to(dtype), B=self.B.to(dtype), scale=self.scale)


@dataclass(frozen=True, eq=False)
class LoraAdapter:
    """A LoRA adapter: modules keyed by their path inside the base model.

    Keys carry no PEFT wrapper prefix, e.g. ``"model.layers.0.self_attn.q_proj"``.
    """

    modules: dict[str, LoraModule] = field(default_factory=dict)
    base_model: str | None = None  # base_model_name_or_path; informational only

    def target_modules(self) -> list[str]:
        """Sorted distinct leaf names of the adapted modules, e.g. ``["k_proj", "q_proj"]``."""
        return sorted({path.rsplit(".", 1)[-1] for path in self.modules})

    def ranks(self) -> dict[str, int]:
        """Rank of each module, keyed by module path."""
        return {path: module.r for path, module in self.modules.items()}

    def num_params(self) -> int:
        """Total number of factor entries over all modules."""
        return sum(module.num_params() for module in self.modules.values())

    def to(self, dtype: torch.dtype) -> LoraAdapter:
        """A copy with every factor cast to ``dtype``."""
        return LoraAdapter(
            modules={path: module.to(dtype) for path, module in self.modules.items()},
            base_model=self.base_model,
        )

    def check_finite(self) -> None:
        """Raise AdapterFormatError naming the first module whose factors hold NaN or inf."""
        with one_thread():
            for path, module in self.modules.items():
                for name, tensor in (("A", module.A), ("B", module.B)):
                    if not is_finite(tensor):
                        raise AdapterFormatError(
                            f"non-finite values (NaN/inf) in {path} lora_{name}"
                        )
