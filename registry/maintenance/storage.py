"""Registry-wide operations: init, storage report, gc, fsck, evaluation records."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import func, select

from mta.registry.blobrefs import REPORT_BUCKET
from mta.registry.context import RegistryContext
from mta.registry.db import current_revision, upgrade
from mta.registry.entities import FsckProblem, FsckReport
from mta.registry.models import (
    BLOB_REFERENCES,
    SqlBank,
    SqlBlob,
    SqlEvalRun,
    SqlRecipe,
    SqlStack,
    SqlUser,
    utcnow,
)
from mta.storage import BlobCorruptedError, BlobNotFoundError
from mta.storage.cache import entry_problem

OPPU_RANK = 8
_DTYPE_BYTES = {"fp16": 2, "fp32": 4}


def init_registry(ctx: RegistryContext) -> dict[str, Any]:
    """Create or migrate the schema to head and create the store; idempotent.

    Returns:
        {"db_url" (password hidden), "store_url", "cache_dir", "revision", "previous_revision",
        "created": whether the database had no registry before}.
    """
    ctx.store.ensure()
    ctx.cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        previous = current_revision(ctx.engine)
    except Exception:  # noqa: BLE001 - e.g. the SQLite folder does not exist yet
        previous = None
    revision = upgrade(ctx.engine)
    ctx.mark_schema_current()
    return {
        "db_url": ctx.engine.url.render_as_string(hide_password=True),
        "store_url": ctx.store_url,
        "cache_dir": str(ctx.cache_dir),
        "revision": revision,
        "previous_revision": previous,
        "created": previous is None,
    }


def _percentile(values: list[int], q: float) -> float:
    """Linear-interpolated percentile (0 for no values)."""
    return float(np.percentile(values, q)) if values else 0.0


def oppu_lora_bytes(shapes: dict[str, tuple[int, int]], rank: int, dtype: str) -> int:
    """Bytes of the factors of one rank-`rank` LoRA on these (out, in) shapes."""
    params = sum(rank * (out_f + in_f) for out_f, in_f in shapes.values())
    return params * _DTYPE_BYTES[dtype]


def storage_report(ctx: RegistryContext) -> dict[str, Any]:
    """Bytes by kind and per user, stale stacks, and the one-LoRA-per-user (OPPU) comparison.

    Every blob is counted once (content addressing shares equal blobs). `total_bytes` is the
    registry's persistent bytes (bank + stacks + embeddings + profiles); the export cache is
    derived and evictable, so it is reported in `by_kind["cache"]` but not in `total_bytes`.
    OPPU stores one rank-8 LoRA per user over the bank's target modules on its base model's
    shapes; `oppu_equivalent_bytes` counts it in fp16 (like MTA's stacks and bank adapters),
    `oppu_equivalent_bytes_fp32` in fp32. `ratio_vs_oppu` = total_bytes / oppu (fp16): below 1
    means MTA stores less. Per-user bytes are profile + embedding + every stack of the user.
    """
    with ctx.read_session() as session:
        by_kind: dict[str, int] = {"bank": 0, "stacks": 0, "embeddings": 0, "profiles": 0}
        kinds = session.execute(select(SqlBlob.kind, func.sum(SqlBlob.size)).group_by(SqlBlob.kind))
        for kind, size in kinds:
            bucket = REPORT_BUCKET.get(kind, "other")
            by_kind[bucket] = by_kind.get(bucket, 0) + int(size or 0)
        sizes = dict(session.execute(select(SqlBlob.digest, SqlBlob.size)).tuples().all())
        users = session.execute(
            select(SqlUser.id, SqlUser.profile_blob, SqlUser.embedding_blob, SqlUser.bank_id)
        ).all()
        per_user: dict[str, set[str]] = {u.id: {u.profile_blob, u.embedding_blob} for u in users}
        for user_id, digest in session.execute(select(SqlStack.user_id, SqlStack.blob)):
            per_user[user_id].add(digest)
        user_bytes = [sum(sizes.get(d, 0) for d in digests) for digests in per_user.values()]
        banks = {b.id: b for b in session.scalars(select(SqlBank))}
        latest: dict[str, int] = defaultdict(int)
        for bank in banks.values():
            latest[bank.task] = max(latest[bank.task], bank.version)
        current_stacks = current_stack_banks(session)
        stale = sorted(
            user_id
            for user_id, bank_id in current_stacks.items()
            if banks[bank_id].version < latest[banks[bank_id].task]
        )
        oppu = _oppu_bytes([banks[user.bank_id] for user in users])
        stacks_total = session.scalar(select(func.count()).select_from(SqlStack)) or 0
    by_kind["cache"] = ctx.adapter_cache.total_bytes() if ctx.cache_dir.exists() else 0
    total = sum(v for k, v in by_kind.items() if k != "cache")
    n_users = len(users)
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


def _oppu_bytes(user_banks: list[SqlBank]) -> dict[str, int]:
    """Bytes of one rank-8 LoRA per user on their bank's shapes, in fp16 and fp32."""
    oppu = {"fp16": 0, "fp32": 0}
    shape_cache: dict[int, dict[str, tuple[int, int]]] = {}
    for bank in user_banks:
        if bank.id not in shape_cache:
            shape_cache[bank.id] = {
                p: (int(s[0]), int(s[1])) for p, s in bank.config["linear_shapes"].items()
            }
        for dtype in oppu:
            oppu[dtype] += oppu_lora_bytes(shape_cache[bank.id], OPPU_RANK, dtype)
    return oppu


def current_stack_banks(session: Any) -> dict[str, int]:
    """user id -> bank id of the user's current stack (newest on their latest recipe)."""
    latest_recipe = dict(
        session.execute(
            select(SqlRecipe.user_id, func.max(SqlRecipe.id)).group_by(SqlRecipe.user_id)
        )
        .tuples()
        .all()
    )
    current: dict[str, tuple[int, int]] = {}
    rows = session.execute(
        select(SqlStack.user_id, SqlStack.recipe_id, SqlStack.id, SqlStack.bank_id)
    )
    for user_id, recipe_id, stack_id, bank_id in rows:
        if latest_recipe.get(user_id) == recipe_id and stack_id > current.get(user_id, (0, 0))[0]:
            current[user_id] = (stack_id, bank_id)
    return {user_id: bank_id for user_id, (_, bank_id) in current.items()}


def _as_utc(value: datetime) -> datetime:
    """Attach UTC to naive datetimes (SQLite)."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def fsck(ctx: RegistryContext, *, verify: bool = True) -> FsckReport:
    """Check every blob-referencing row against the store.

    Args:
        verify: re-hash each referenced blob (slower; False only checks presence and size).

    Returns:
        A report; `ok` is False when a row's blob is missing, corrupt or of the wrong size
        (the CLI exits 3). Orphan blobs are listed but are `gc`'s business, not an error.
    """
    with ctx.read_session() as session:
        sizes = dict(session.execute(select(SqlBlob.digest, SqlBlob.size)).tuples().all())
        refs: list[tuple[str, str, str, str]] = []
        for model, column in BLOB_REFERENCES:
            key = model.__mapper__.primary_key[0]
            for row_key, digest in session.execute(select(key, getattr(model, column))):
                refs.append((model.__tablename__, str(row_key), column, digest))
        referenced = {r[3] for r in refs}
        unreferenced_rows = sorted(set(sizes) - referenced)
    status: dict[str, tuple[str, str] | None] = {}
    for digest in sorted(referenced | set(sizes)):
        status[digest] = _check_blob(
            ctx, digest, sizes.get(digest), verify, BlobNotFoundError, BlobCorruptedError
        )
    missing: list[FsckProblem] = []
    corrupt: list[FsckProblem] = []
    for table, row_key, column, digest in refs:
        problem = status[digest]
        if problem is None:
            continue
        entry = FsckProblem(table, row_key, column, digest, problem[0], problem[1])
        (missing if problem[0] == "missing" else corrupt).append(entry)
    for digest in unreferenced_rows:
        problem = status[digest]
        if problem is not None:
            target = missing if problem[0] == "missing" else corrupt
            target.append(FsckProblem("blobs", digest, "digest", digest, problem[0], problem[1]))
    corrupt.extend(_check_cache(ctx))
    orphans = {
        info.digest: info.size
        for info in ctx.store.iter_blobs()
        if info.digest not in sizes and info.digest not in referenced
    }
    return FsckReport(
        ok=not missing and not corrupt,
        checked=len(status),
        missing=tuple(missing),
        corrupt=tuple(corrupt),
        orphans=tuple(sorted(orphans)),
        orphan_bytes=int(sum(orphans.values())),
        unreferenced_rows=tuple(unreferenced_rows),
    )


def _check_cache(ctx: RegistryContext) -> list[FsckProblem]:
    """Export-cache entries whose files no longer match their manifest."""
    cache = ctx.adapter_cache
    problems = []
    for key in cache.keys():  # noqa: SIM118 - AdapterCache is not a dict
        problem = entry_problem(cache.path_for(key))
        if problem is not None:
            problems.append(FsckProblem("cache", key, "files", "", "corrupt", problem))
    return problems


def _check_blob(
    ctx: RegistryContext,
    digest: str,
    expected_size: int | None,
    verify: bool,
    not_found: type[Exception],
    corrupted: type[Exception],
) -> tuple[str, str] | None:
    """(problem, detail) for one blob, or None when it is intact."""
    try:
        size = ctx.store.size(digest)
        if expected_size is not None and size != expected_size:
            return "size_mismatch", f"store has {size} bytes, registry recorded {expected_size}"
        if verify:
            ctx.store.verify(digest)
    except not_found:
        return "missing", "not in the store"
    except corrupted as error:
        return "corrupt", " ".join(str(error).split())
    return None


def record_eval_run(ctx: RegistryContext, *, task: str, config: dict, results: dict) -> int:
    """Store one evaluation run; returns its id."""
    with ctx.session() as session:
        row = SqlEvalRun(task=task, config=config, results=results, created_at=utcnow())
        session.add(row)
        session.flush()
        return int(row.id)


def list_eval_runs(ctx: RegistryContext, *, task: str | None = None) -> list[dict[str, Any]]:
    """Recorded evaluation runs, newest first, as plain dicts."""
    with ctx.read_session() as session:
        query = select(SqlEvalRun).order_by(SqlEvalRun.id.desc())
        if task is not None:
            query = query.where(SqlEvalRun.task == task)
        return [
            {
                "id": r.id,
                "task": r.task,
                "created_at": _as_utc(r.created_at).isoformat(),
                "config": r.config,
                "results": r.results,
            }
            for r in session.scalars(query)
        ]
