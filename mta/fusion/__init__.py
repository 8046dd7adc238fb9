"""Fusion methods registered by name: how anchors' LoRAs become one adapter.

One method per module (`cat`, `svd`, `factorwise`), the contract in `base`, the shared
input checks in `inputs`, and the one list of methods in `registry` (`FUSION_METHODS`);
every caller looks methods up by name. All methods work on adapter tensors alone, never
on the base model.
"""

from __future__ import annotations

from mta.fusion.base import FusionMethod
from mta.fusion.registry import DEFAULT_FUSION, FUSION_METHODS, fuse, get_fusion
from mta.fusion.svd import compress

__all__ = ["DEFAULT_FUSION", "FUSION_METHODS", "FusionMethod", "compress", "fuse", "get_fusion"]
