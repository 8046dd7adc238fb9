"""`mta storage report`: bytes by kind and per user, stale stacks, and the OPPU comparison."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mta.registry.banks.versions import bank_shapes
from mta.registry.blobrefs import REPORT_BUCKET
from mta.registry.context import RegistryContext
from mta.registry.models import SqlBank, SqlBlob, SqlStack, SqlUser
from mta.registry.requests import AdaptRequest
from mta.registry.users.current_stacks import current_stack_banks, current_stack_formats

OPPU_RANK = 8
_DTYPE_BYTES = {"fp16": 2, "fp32": 4}


def storage_report(ctx: RegistryContext) -> dict[str, Any]:
    """Bytes by kind and per user, stale stacks, and the one-LoRA-per-user (OPPU) comparison.

    Every blob is counted once (content addressing shares equal blobs). `total_bytes` is the
    registry's persistent bytes (bank + stacks + embeddings + profiles); the export cache is
    derived and evictable, so it is reported in `by_kind["cache"]` but not in `total_bytes`.
    OPPU stores one rank-8 LoRA per user over the bank's target modules on its base model's
    shapes; `oppu_equivalent_bytes` counts it in fp16 (like MTA's stacks and bank adapters),
    `oppu_equivalent_bytes_fp32` in fp32. `ratio_vs_oppu` = total_bytes / oppu (fp16): below 1
    means MTA stores less. Per-user bytes are profile + embedding + every stack of the user.
    `current_stack_formats` counts users' current stacks by storage format, next to the
    format `mta user adapt` stores by default (`default_stack_format`).
    """
    with ctx.read_session() as session:
        by_kind = _bytes_by_kind(session)
        user_bytes = _bytes_per_user(session)
        banks = {b.id: b for b in session.scalars(select(SqlBank))}
        current_stacks = current_stack_banks(session)
        formats = current_stack_formats(session)
        oppu = _oppu_bytes([banks[bank_id] for bank_id in session.scalars(select(SqlUser.bank_id))])
        stacks_total = session.scalar(select(func.count()).select_from(SqlStack)) or 0
    stale = _stale_users(current_stacks, banks)
    by_kind["cache"] = ctx.adapter_cache.total_bytes() if ctx.cache_dir.exists() else 0
    total = sum(v for k, v in by_kind.items() if k != "cache")
    n_users = len(user_bytes)
    user_total = sum(user_bytes)
    return {
        "total_bytes": total,
        "by_kind": by_kind,
        "users": n_users,
        "per_user_bytes": {
            "mean": float(user_total / n_users) if n_users else 0.0,
            "p50": _percentile(user_bytes, 50),
            "p99": _percentile(user_bytes, 99),
            "max": max(user_bytes) if user_bytes else 0,
        },
        "stacks": int(stacks_total),
        "current_stacks": len(current_stacks),
        # Users whose current stack is in another format than the default can be re-stored.
        "current_stack_formats": formats,
        "default_stack_format": AdaptRequest.dtype,
        "stale_stacks": len(stale),
        "stale_users": stale,
        "banks": len(banks),
        "oppu_rank": OPPU_RANK,
        "oppu_dtype": "fp16",
        "oppu_equivalent_bytes": oppu["fp16"],
        "oppu_equivalent_bytes_fp32": oppu["fp32"],
        "oppu_per_user_bytes": (oppu["fp16"] / n_users) if n_users else 0.0,
        "ratio_vs_oppu": (total / oppu["fp16"]) if oppu["fp16"] else None,
        "ratio_per_user_vs_oppu": (user_total / oppu["fp16"]) if oppu["fp16"] else None,
    }


def _bytes_by_kind(session: Session) -> dict[str, int]:
    """Recorded blob bytes per report bucket (bank, stacks, embeddings, profiles, other)."""
    by_kind: dict[str, int] = {"bank": 0, "stacks": 0, "embeddings": 0, "profiles": 0}
    kinds = session.execute(select(SqlBlob.kind, func.sum(SqlBlob.size)).group_by(SqlBlob.kind))
    for kind, size in kinds:
        bucket = REPORT_BUCKET.get(kind, "other")
        by_kind[bucket] = by_kind.get(bucket, 0) + int(size or 0)
    return by_kind


def _bytes_per_user(session: Session) -> list[int]:
    """Each user's bytes: profile, embedding and every stack, each distinct blob once."""
    sizes = dict(session.execute(select(SqlBlob.digest, SqlBlob.size)).tuples().all())
    users = session.execute(select(SqlUser.id, SqlUser.profile_blob, SqlUser.embedding_blob))
    per_user: dict[str, set[str]] = {u.id: {u.profile_blob, u.embedding_blob} for u in users}
    for user_id, digest in session.execute(select(SqlStack.user_id, SqlStack.blob)):
        per_user[user_id].add(digest)
    return [sum(sizes.get(d, 0) for d in digests) for digests in per_user.values()]


def _stale_users(current_stacks: dict[str, int], banks: dict[int, SqlBank]) -> list[str]:
    """Users whose current stack was trained on an older bank version than the task's latest."""
    latest: dict[str, int] = defaultdict(int)
    for bank in banks.values():
        latest[bank.task] = max(latest[bank.task], bank.version)
    return sorted(
        user_id
        for user_id, bank_id in current_stacks.items()
        if banks[bank_id].version < latest[banks[bank_id].task]
    )


def _percentile(values: list[int], q: float) -> float:
    """Linear-interpolated percentile (0 for no values)."""
    return float(np.percentile(values, q)) if values else 0.0


def oppu_lora_bytes(shapes: dict[str, tuple[int, int]], rank: int, dtype: str) -> int:
    """Bytes of the factors of one rank-`rank` LoRA on these (out, in) shapes."""
    params = sum(rank * (out_f + in_f) for out_f, in_f in shapes.values())
    return params * _DTYPE_BYTES[dtype]


def _oppu_bytes(user_banks: list[SqlBank]) -> dict[str, int]:
    """Bytes of one rank-8 LoRA per user on their bank's shapes, in fp16 and fp32."""
    oppu = {"fp16": 0, "fp32": 0}
    shape_cache: dict[int, dict[str, tuple[int, int]]] = {}
    for bank in user_banks:
        if bank.id not in shape_cache:
            shape_cache[bank.id] = bank_shapes(bank)
        for dtype in oppu:
            oppu[dtype] += oppu_lora_bytes(shape_cache[bank.id], OPPU_RANK, dtype)
    return oppu
