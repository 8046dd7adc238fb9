"""Factor-wise interpolation, the paper's public-code merge, kept for parity experiments.

``B = Σ w_i B_i`` and ``A = Σ w_i A_i`` separately, so the delta is
``s·(Σ w_i B_i)(Σ w_i A_i)``. That differs from the exact ``Σ w_i s B_i A_i`` by
cross terms (two anchors: ``−w_1 w_2 s (B_1−B_2)(A_1−A_2)`` when w_1 + w_2 = 1).
Weights are used in the order given: unlike the paper's script we never swap
them so that the higher-scoring anchor gets the smaller weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mta.errors import ShapeMismatchError
from mta.fusion.inputs import align_modules, check_weights, common_base_model
from mta.lora import LoraAdapter, LoraModule, one_thread


class FactorwiseFusion:
    """Interpolate A and B separately; the result keeps the anchors' shared rank and scale.

    The paper's code interpolates adapter state dicts that share one config, so the
    merged adapter keeps that config's scaling. We require the same: for every
    module, all adapters that have it must agree on rank and scale (anchors of one
    bank do). A module missing from an adapter contributes zero factors.
    """

    name = "factorwise"

    def fuse(
        self,
        adapters: Sequence[LoraAdapter],
        weights: Sequence[float],
        *,
        rank: int | None = None,
    ) -> LoraAdapter:
        """Fuse factor-wise; factors come back in fp32.

        Raises:
            ValueError: bad weights, a ``rank`` argument, or modules whose scales differ.
            ShapeMismatchError: modules whose shapes or ranks differ across adapters.
        """
        if rank is not None:
            raise ValueError("method 'factorwise' keeps the anchors' rank; it takes no rank")
        values = check_weights(adapters, weights)
        modules: dict[str, LoraModule] = {}
        aligned = align_modules(adapters, values)
        for path, entries in aligned.items():
            ref = entries[0][1]
            for _, module in entries[1:]:
                if module.r != ref.r:
                    raise ShapeMismatchError(
                        f"{path}: factorwise fusion needs equal ranks, got {ref.r} and {module.r}"
                    )
                if not math.isclose(module.scale, ref.scale, rel_tol=1e-9):
                    raise ValueError(
                        f"{path}: factorwise fusion needs equal scales, got {ref.scale} and "
                        f"{module.scale}; use method 'cat' for anchors with different alphas"
                    )
        with one_thread():  # hundreds of small sums: threads only add stalls
            for path, entries in aligned.items():
                A = torch.stack([m.A.float() * w for w, m in entries]).sum(dim=0)
                B = torch.stack([m.B.float() * w for w, m in entries]).sum(dim=0)
                modules[path] = LoraModule(A=A, B=B, scale=entries[0][1].scale)
        return LoraAdapter(modules=modules, base_model=common_base_model(adapters))
