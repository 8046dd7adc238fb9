"""Compressed fusion: the truncated SVD of a low-rank delta, never forming the dense ΔW."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mta.fusion.cat import CatFusion
from mta.lora import LoraAdapter, LoraModule, one_thread


def _truncate_batch(
    A: torch.Tensor, B: torch.Tensor, scales: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched core of ``truncate_module``: A (n, R, in), B (n, out, R), scales (n,)."""
    q_b, r_b = torch.linalg.qr(B.float())  # (n, out, k1), (n, k1, R)
    q_a, r_a = torch.linalg.qr(A.float().transpose(1, 2))  # (n, in, k2), (n, k2, R)
    # The core is at most R×R: float64 costs nothing and keeps the spectrum accurate.
    core = (r_b.double() @ r_a.double().transpose(1, 2)) * scales.double()[:, None, None]
    u, sigma, vh = torch.linalg.svd(core, full_matrices=False)
    keep = min(rank, sigma.shape[-1])
    root = sigma[:, :keep].sqrt()
    new_b = q_b @ (u[:, :, :keep] * root[:, None, :]).float()
    new_a = (root[:, :, None] * vh[:, :keep]).float() @ q_a.transpose(1, 2)
    return new_a, new_b


def truncate_module(module: LoraModule, rank: int) -> LoraModule:
    """The best rank-``rank`` approximation (Frobenius) of ``module.delta()``, as a LoRA.

    With ``ΔW = s·B A``: reduced QR ``B = Q_b R_b`` and ``Aᵀ = Q_a R_a``, SVD of the
    small core ``s·R_b R_aᵀ = U Σ Vᵀ``, then ``B' = Q_b U_r Σ_r^{1/2}`` and
    ``A' = Σ_r^{1/2} V_rᵀ Q_aᵀ`` with scale 1. Cost O((in + out)·R²) for rank R.
    A module of rank ≤ ``rank`` comes back unchanged (cloned).
    """
    if module.r <= rank:
        return LoraModule(A=module.A.clone(), B=module.B.clone(), scale=module.scale)
    new_a, new_b = _truncate_batch(
        module.A[None], module.B[None], torch.tensor([module.scale]), rank
    )
    return LoraModule(A=new_a[0].contiguous(), B=new_b[0].contiguous(), scale=1.0)


def _truncate_all(
    modules: dict[str, LoraModule], ranks: dict[str, int], *, copy: bool
) -> dict[str, LoraModule]:
    """Truncate each module to ``ranks[path]``, batching modules of equal shape and rank.

    Modules already within their rank are kept, cloned when ``copy`` is set.

    One batched QR/SVD per (shape, rank) group instead of one per module: a
    30-layer model has ~5 groups, so the many tiny LAPACK calls (slow to schedule
    across threads) become a handful.
    """
    result: dict[str, LoraModule] = {}
    groups: dict[tuple[int, int, int, int], list[str]] = {}
    with one_thread():
        for path, module in modules.items():
            if module.r > ranks[path]:
                key = (module.out_features, module.in_features, module.r, ranks[path])
                groups.setdefault(key, []).append(path)
            elif copy:
                result[path] = LoraModule(
                    A=module.A.clone(), B=module.B.clone(), scale=module.scale
                )
            else:
                result[path] = module
        for (_, _, _, rank), paths in groups.items():
            A = torch.stack([modules[p].A.float() for p in paths])
            B = torch.stack([modules[p].B.float() for p in paths])
            scales = torch.tensor([modules[p].scale for p in paths], dtype=torch.float64)
            new_a, new_b = _truncate_batch(A, B, scales, rank)
            for i, path in enumerate(paths):
                result[path] = LoraModule(A=new_a[i].clone(), B=new_b[i].clone(), scale=1.0)
    return {path: result[path] for path in modules}


def compress(adapter: LoraAdapter, rank: int) -> LoraAdapter:
    """Truncate every module of ``adapter`` to at most ``rank`` via ``truncate_module``.

    Raises:
        ValueError: ``rank`` is not a positive integer.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    ranks = {path: rank for path in adapter.modules}
    return LoraAdapter(
        modules=_truncate_all(adapter.modules, ranks, copy=True), base_model=adapter.base_model
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
            max_ranks = {path: rank for path in exact.modules}
        else:
            max_ranks = {}
            for adapter in adapters:
                for path, r in adapter.ranks().items():
                    max_ranks[path] = max(r, max_ranks.get(path, 0))
        return LoraAdapter(
            modules=_truncate_all(exact.modules, max_ranks, copy=False),
            base_model=exact.base_model,
        )
