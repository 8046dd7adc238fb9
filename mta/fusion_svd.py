"""Compressed fusion: the truncated SVD of a low-rank delta, never forming the dense ΔW."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mta.fusion_cat import CatFusion
from mta.lora import LoraAdapter, LoraModule


def truncate_module(module: LoraModule, rank: int) -> LoraModule:
    """The best rank-``rank`` approximation (Frobenius) of ``module.delta()``, as a LoRA.

    With ``ΔW = s·B A``: reduced QR ``B = Q_b R_b`` and ``Aᵀ = Q_a R_a``, SVD of the
    small core ``s·R_b R_aᵀ = U Σ Vᵀ``, then ``B' = Q_b U_r Σ_r^{1/2}`` and
    ``A' = Σ_r^{1/2} V_rᵀ Q_aᵀ`` with scale 1. Cost O((in + out)·R²) for rank R.
    A module of rank ≤ ``rank`` comes back unchanged (cloned).
    """
    if module.r <= rank:
        return LoraModule(A=module.A.clone(), B=module.B.clone(), scale=module.scale)
    q_b, r_b = torch.linalg.qr(module.B.float())  # (out, k1), (k1, R)
    q_a, r_a = torch.linalg.qr(module.A.float().T)  # (in, k2), (k2, R)
    # The core is at most R×R: float64 costs nothing and keeps the spectrum accurate.
    core = (r_b.double() @ r_a.double().T) * module.scale
    u, sigma, vh = torch.linalg.svd(core, full_matrices=False)
    keep = min(rank, sigma.numel())
    root = sigma[:keep].sqrt()
    B = q_b @ (u[:, :keep] * root).float()
    A = (root[:, None] * vh[:keep]).float() @ q_a.T
    return LoraModule(A=A.contiguous(), B=B.contiguous(), scale=1.0)


def compress(adapter: LoraAdapter, rank: int) -> LoraAdapter:
    """Truncate every module of ``adapter`` to at most ``rank`` via ``truncate_module``.

    Raises:
        ValueError: ``rank`` is not a positive integer.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    return LoraAdapter(
        modules={path: truncate_module(m, rank) for path, m in adapter.modules.items()},
        base_model=adapter.base_model,
    )


class SvdFusion:
    """Exact concatenation, then the truncated SVD of each module's fused delta.

    Without ``rank`` each module keeps the largest rank among the adapters that
    have it (PEFT's ``svd_rank`` default).
    """

    name = "svd"

    def fuse(
        self,
        adapters: Sequence[LoraAdapter],
        weights: Sequence[float],
        *,
        rank: int | None = None,
    ) -> LoraAdapter:
        """Fuse and compress; factors come back in fp32.

        Raises:
            ValueError: bad weights or rank.
            ShapeMismatchError: adapters disagree on a module's shape.
        """
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        exact = CatFusion().fuse(adapters, weights)
        if rank is not None:
            return compress(exact, rank)
        max_ranks: dict[str, int] = {}
        for adapter in adapters:
            for path, r in adapter.ranks().items():
                max_ranks[path] = max(r, max_ranks.get(path, 0))
        return LoraAdapter(
            modules={p: truncate_module(m, max_ranks[p]) for p, m in exact.modules.items()},
            base_model=exact.base_model,
        )
