"""The one list of fusion methods, looked up by name by every caller."""

from __future__ import annotations

from collections.abc import Sequence

from mta.errors import unknown_name
from mta.fusion.base import FusionMethod
from mta.fusion.cat import CatFusion
from mta.fusion.factorwise import FactorwiseFusion
from mta.fusion.svd import SvdFusion
from mta.lora import LoraAdapter

DEFAULT_FUSION = "cat"


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
