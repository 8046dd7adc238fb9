"""Fusion methods registered by name: how anchors' LoRAs become one adapter.

Methods live one per module (``fusion_cat``, ``fusion_svd``, ``fusion_factorwise``)
and are listed once, in ``FUSION_METHODS``; every caller looks them up by name.
All methods work on adapter tensors alone, never on the base model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from mta.errors import unknown_name
from mta.fusion_cat import CatFusion
from mta.fusion_factorwise import FactorwiseFusion
from mta.fusion_svd import SvdFusion, compress
from mta.lora import LoraAdapter

__all__ = ["DEFAULT_FUSION", "FUSION_METHODS", "FusionMethod", "compress", "fuse", "get_fusion"]

DEFAULT_FUSION = "cat"


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


FUSION_METHODS: dict[str, FusionMethod] = {
    method.name: method for method in (CatFusion(), SvdFusion(), FactorwiseFusion())
}


def get_fusion(name: str) -> FusionMethod:
    """The fusion method called ``name``; UnknownNameError lists the valid names."""
    try:
        return FUSION_METHODS[name]
    except KeyError:
        raise unknown_name("fusion method", name, list(FUSION_METHODS)) from None


def fuse(
    adapters: Sequence[LoraAdapter],
    weights: Sequence[float],
    *,
    method: str = DEFAULT_FUSION,
    rank: int | None = None,
) -> LoraAdapter:
    """Fuse weighted adapters with the named method.

    Args:
        adapters: The anchors' adapters, at least one.
        weights: One finite weight per adapter, not all zero; used as given.
        method: "cat" (exact, default), "svd" (compressed to ``rank``) or "factorwise".
        rank: Target rank for "svd" (default: the largest anchor rank per module).

    Returns:
        The fused adapter, factors in fp32.

    Raises:
        UnknownNameError: unknown method.
        ValueError: bad weights or a rank the method does not take.
        ShapeMismatchError: adapters that disagree on a module's shape.
    """
    return get_fusion(method).fuse(adapters, weights, rank=rank)
