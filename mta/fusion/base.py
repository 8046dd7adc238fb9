"""The contract every fusion method meets: a name and a `fuse` on adapter tensors alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from mta.lora import LoraAdapter


class FusionMethod(Protocol):
    """A named way to fuse weighted adapters into one."""

    name: str

    def fuse(
        self,
        adapters: Sequence[LoraAdapter],
        weights: Sequence[float],
        *,
        rank: int | None = None,
    ) -> LoraAdapter:
        """Fuse ``adapters`` with one weight each; ``rank`` only where the method takes one."""
        ...
