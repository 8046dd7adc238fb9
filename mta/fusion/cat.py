"""Exact fusion by concatenation: Σ w_i s_i B_i A_i as one LoRA of rank Σ r_i."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mta.fusion.inputs import align_modules, check_weights, common_base_model
from mta.lora import LoraAdapter, LoraModule, one_thread


class CatFusion:
    """``A = [A_1; …; A_k]``, ``B = [w_1 s_1 B_1 | … | w_k s_k B_k]``, scale 1 (DESIGN §2).

    Exact: the fused delta equals the weighted sum of the anchors' deltas. Every
    adapter contributes its rank, zero-weighted ones included, so the fused rank
    of a module is the sum of the ranks of the adapters that have it.
    """

    name = "cat"

    def fuse(
        self,
        adapters: Sequence[LoraAdapter],
        weights: Sequence[float],
        *,
        rank: int | None = None,
    ) -> LoraAdapter:
        """Fuse exactly; factors come back in fp32.

        Raises:
            ValueError: bad weights, or a ``rank`` (cat's rank is fixed; use "svd").
            ShapeMismatchError: adapters disagree on a module's shape.
        """
        if rank is not None:
            raise ValueError(
                "method 'cat' is exact and its rank is the sum of the anchor ranks; "
                "use method 'svd' to choose a rank"
            )
        values = check_weights(adapters, weights)
        modules: dict[str, LoraModule] = {}
        with one_thread():  # hundreds of small copies: threads only add stalls
            for path, entries in align_modules(adapters, values).items():
                A = torch.cat([m.A.float() for _, m in entries], dim=0)
                # w * s is formed in float64 before touching the fp32 factor.
                B = torch.cat([m.B.float() * (w * m.scale) for w, m in entries], dim=1)
                modules[path] = LoraModule(A=A, B=B, scale=1.0)
        return LoraAdapter(modules=modules, base_model=common_base_model(adapters))
