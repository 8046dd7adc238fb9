"""Bank versions: look up, list, alias, and publish a version (builds are in `build`).

Bank adapters are stored as fp16 safetensors blobs (half the bytes of fp32; fine-tuned LoRA
factors lose nothing that matters at that precision). Fusion is exact with respect to the
stored fp16 factors: the recipe rebuilds the same delta every time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mta.progress import ProgressFn
from mta.registry.blobrefs import (
    KIND_ANCHOR_ADAPTER,
    KIND_ANCHOR_EMBEDDING,
    KIND_BANK_INDEX,
    PendingBlob,
    put_blob,
    reassert_blobs,
    record_blob,
)
from mta.registry.context import RegistryContext
from mta.registry.entities import BankDetail, BankVersion
from mta.registry.errors import AlreadyExistsError, InvalidInputError, NotFoundError
from mta.registry.models import SqlAnchor, SqlBank, SqlBankAlias, SqlBlob, utcnow
from mta.registry.names import validate_alias

ANCHOR_DATA_MODES = ("user", "cluster")
BANK_ADAPTER_DTYPE = "fp16"
PROD_ALIAS = "prod"
_PUBLISH_RETRIES = 5


@dataclass
class AnchorPayload:
    """One anchor ready to publish: adapter bytes and embedding, before any row exists."""

    anchor_id: str
    adapter_bytes: bytes
    embedding: np.ndarray
    history_length: int
    cluster_size: int


def report_progress(progress: ProgressFn | None, stage: str, done: int, total: int) -> None:
    """Call the optional progress callback."""
    if progress is not None:
        progress(stage, done, total)


def base_model_name(spec: str | None) -> str:
    """The base-model name recorded in a bank: the alias as given, a local path made absolute."""
    from mta.base_model import DEFAULT_BASE_MODEL, resolve_base_model

    name = spec or os.environ.get("MTA_BASE_MODEL") or DEFAULT_BASE_MODEL
    if name.lower() == DEFAULT_BASE_MODEL:
        return DEFAULT_BASE_MODEL
    return resolve_base_model(name)


def check_model_specs(base_model: str | None, embedder: str | None) -> str:
    """Resolve the base model and embedder specs without loading weights (cheap checks first).

    Returns:
        The base-model name a bank records (see `base_model_name`).

    Raises:
        MtaError: a path-like spec that does not exist, a folder holding no model, or the
            bundled default's wheel missing. Hub ids are only checked when loaded.
    """
    from mta.base_model import resolve_base_model
    from mta.embedding import resolve_embedder
    from mta.errors import MtaError

    model_name = base_model_name(base_model)
    location = Path(resolve_base_model(model_name))
    if location.is_dir() and not (location / "config.json").is_file():
        raise MtaError(f"base model folder {location} has no config.json")
    name, where, local_only = resolve_embedder(embedder)
    if local_only and not any((Path(where) / f).is_file() for f in ("modules.json", "config.json")):
        raise MtaError(f"embedder folder {where} holds no sentence-transformers model")
    if not local_only and name.startswith((".", "/", "~")):
        raise MtaError(f"embedder path {name!r} does not exist")
    return model_name


def check_enough_candidates(users: Sequence[dict], anchors: int, min_history: int) -> None:
    """Refuse a build whose users cannot yield `anchors` anchors, before embedding them."""
    eligible = sum(len(u["profile"]) >= min_history for u in users)
    if anchors > eligible:
        raise InvalidInputError(
            f"cannot select {anchors} anchors: only {eligible} of {len(users)} candidates "
            f"have at least {min_history} history items (lower --min-history or --anchors)"
        )


# --- lookups shared with the user service -------------------------------------------------


def latest_version(session: Session, task: str) -> int:
    """Highest published version of `task` (0 when none)."""
    return int(session.scalar(select(func.max(SqlBank.version)).where(SqlBank.task == task)) or 0)


def resolve_bank(session: Session, task: str, ref: str | int | None = None) -> SqlBank:
    """Find a bank by version number ("3", "v3", 3), alias ("prod"), or latest (None/"latest").

    Raises:
        NotFoundError: naming what exists for the task.
    """
    text = str(ref).strip() if ref is not None else "latest"
    query = select(SqlBank).where(SqlBank.task == task)
    if text == "latest":
        row = session.scalars(query.order_by(SqlBank.version.desc()).limit(1)).first()
    elif text.isdigit() or (text[:1] in "vV" and text[1:].isdigit()):
        row = session.scalars(query.where(SqlBank.version == int(text.lstrip("vV")))).first()
    else:
        alias = session.get(SqlBankAlias, (task, text))
        row = session.get(SqlBank, alias.bank_id) if alias is not None else None
    if row is not None:
        return row
    versions = session.scalars(
        select(SqlBank.version).where(SqlBank.task == task).order_by(SqlBank.version)
    ).all()
    if not versions:
        raise NotFoundError(f"no bank for task {task!r}; run `mta bank build {task}` or push one")
    aliases = session.scalars(select(SqlBankAlias.alias).where(SqlBankAlias.task == task)).all()
    known = ", ".join([f"v{v}" for v in versions] + sorted(aliases))
    raise NotFoundError(f"task {task!r} has no bank {text!r}; it has: {known}")


def default_bank(session: Session, task: str) -> SqlBank:
    """The bank new users are pinned to: the task's `prod` alias if set, else the latest."""
    alias = session.get(SqlBankAlias, (task, PROD_ALIAS))
    if alias is not None:
        return session.get_one(SqlBank, alias.bank_id)
    return resolve_bank(session, task, None)


def bank_entity(session: Session, row: SqlBank) -> BankVersion:
    """A bank row as an entity, with its anchor count, aliases and whether it is the latest."""
    count = session.scalar(select(func.count()).where(SqlAnchor.bank_id == row.id)) or 0
    aliases = session.scalars(
        select(SqlBankAlias.alias)
        .where(SqlBankAlias.bank_id == row.id)
        .order_by(SqlBankAlias.alias)
    ).all()
    return row.to_entity(
        num_anchors=int(count),
        aliases=tuple(aliases),
        latest_version=latest_version(session, row.task),
    )


def bank_shapes(row: SqlBank) -> dict[str, tuple[int, int]]:
    """The base model's (out, in) per targeted module, cached in the bank row at publish time."""
    return {path: (int(s[0]), int(s[1])) for path, s in row.config["linear_shapes"].items()}


# --- read API ------------------------------------------------------------------------------


def list_banks(ctx: RegistryContext, *, task: str | None = None) -> list[BankVersion]:
    """Every bank version, by task then version (optionally one task's)."""
    with ctx.read_session() as session:
        query = select(SqlBank).order_by(SqlBank.task, SqlBank.version)
        if task is not None:
            query = query.where(SqlBank.task == task)
        return [bank_entity(session, row) for row in session.scalars(query)]


def get_bank(ctx: RegistryContext, task: str, ref: str | None = None) -> BankDetail:
    """One bank version with its anchors.

    Args:
        task: the task name.
        ref: version number ("3" or "v3"), alias, or None / "latest".

    Raises:
        NotFoundError: no such task or version.
    """
    with ctx.read_session() as session:
        row = resolve_bank(session, task, ref)
        anchors = session.scalars(
            select(SqlAnchor).where(SqlAnchor.bank_id == row.id).order_by(SqlAnchor.id)
        ).all()
        entity = bank_entity(session, row)
        digests = {row.index_blob}
        digests.update(d for a in anchors for d in (a.adapter_blob, a.embedding_blob))
        sizes = _blob_sizes(session, sorted(digests))
        config = {k: v for k, v in row.config.items() if k != "linear_shapes"}
        config["num_linear_modules"] = len(row.config.get("linear_shapes", {}))
        return BankDetail(
            **{f: getattr(entity, f) for f in BankVersion.__dataclass_fields__},
            anchors=tuple(a.to_entity(adapter_bytes=sizes.get(a.adapter_blob, 0)) for a in anchors),
            config=config,
            index_blob=row.index_blob,
            total_bytes=sum(sizes.values()),
        )


def _blob_sizes(session: Session, digests: Sequence[str]) -> dict[str, int]:
    """Recorded size of each digest."""
    if not digests:
        return {}
    rows = session.execute(
        select(SqlBlob.digest, SqlBlob.size).where(SqlBlob.digest.in_(set(digests)))
    )
    return {digest: int(size) for digest, size in rows}


def set_alias(ctx: RegistryContext, task: str, version: int, alias: str) -> BankVersion:
    """Point `alias` (e.g. "prod") at a version of `task`'s bank; aliases move, versions never.

    Raises:
        InvalidInputError: a malformed or reserved alias.
        NotFoundError: no such version.
    """
    validate_alias(alias)
    with ctx.session() as session:
        row = resolve_bank(session, task, int(version))
        existing = session.get(SqlBankAlias, (task, alias))
        if existing is None:
            session.add(SqlBankAlias(task=task, alias=alias, bank_id=row.id, updated_at=utcnow()))
        else:
            existing.bank_id = row.id
            existing.updated_at = utcnow()
        session.flush()
        return bank_entity(session, row)


# --- publishing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _StoredAnchor:
    """An anchor whose blobs are in the store, waiting for its row."""

    payload: AnchorPayload
    adapter: PendingBlob
    vector: PendingBlob


def publish_bank(
    ctx: RegistryContext,
    *,
    task: str,
    base_model: str,
    embedder: str,
    target_modules: Sequence[str],
    rank: int,
    anchor_data: str,
    config: dict[str, Any],
    anchors: Sequence[AnchorPayload],
) -> BankVersion:
    """Store the anchors' blobs and the HNSW index, then the rows of a new version (max + 1).

    Blobs go first; the bank, its anchors and the blob records are one transaction, so a
    reader sees a complete version or none.

    Raises:
        InvalidInputError: no anchors.
        AlreadyExistsError: other publishers took the next version number every time.
    """
    if not anchors:
        raise InvalidInputError("a bank needs at least one anchor")
    vectors = np.stack([np.asarray(a.embedding, dtype=np.float32) for a in anchors])
    index_blob = _store_index(ctx, [a.anchor_id for a in anchors], vectors)
    stored = [_store_anchor(ctx, anchor) for anchor in anchors]
    columns = {
        "task": task,
        "base_model": base_model,
        "embedder": embedder,
        "target_modules": list(target_modules),
        "rank": int(rank),
        "anchor_data": anchor_data,
        "config": {
            **config,
            "embedding_dim": int(vectors.shape[1]),
            "adapter_dtype": BANK_ADAPTER_DTYPE,
        },
        "index_blob": index_blob.digest,
    }
    published = _insert_version(ctx, columns, index_blob, stored)
    reassert_blobs(ctx, [index_blob, *(b for s in stored for b in (s.adapter, s.vector))])
    return published


def _store_index(ctx: RegistryContext, ids: list[str], vectors: np.ndarray) -> PendingBlob:
    """Build the anchors' HNSW index and store it as a blob."""
    from mta.index import AnchorIndex

    return put_blob(ctx, AnchorIndex.build(ids, vectors).to_bytes(), KIND_BANK_INDEX)


def _store_anchor(ctx: RegistryContext, anchor: AnchorPayload) -> _StoredAnchor:
    """Store one anchor's adapter and embedding blobs."""
    adapter = put_blob(ctx, anchor.adapter_bytes, KIND_ANCHOR_ADAPTER)
    vector = np.ascontiguousarray(anchor.embedding, dtype=np.float32).tobytes()
    return _StoredAnchor(anchor, adapter, put_blob(ctx, vector, KIND_ANCHOR_EMBEDDING))


def _insert_version(
    ctx: RegistryContext,
    columns: dict[str, Any],
    index_blob: PendingBlob,
    stored: Sequence[_StoredAnchor],
) -> BankVersion:
    """Insert the version's rows in one transaction, numbered max + 1 of the task.

    Another process publishing the same task at the same moment takes the number first;
    then the insert is retried with the next number.
    """
    for attempt in range(1, _PUBLISH_RETRIES + 1):
        try:
            with ctx.session() as session:
                return _insert_rows(session, columns, index_blob, stored)
        except AlreadyExistsError:
            if attempt == _PUBLISH_RETRIES:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def _insert_rows(
    session: Session,
    columns: dict[str, Any],
    index_blob: PendingBlob,
    stored: Sequence[_StoredAnchor],
) -> BankVersion:
    """The blob records, the bank row (`columns` + version) and its anchor rows."""
    record_blob(session, index_blob)
    for anchor in stored:
        record_blob(session, anchor.adapter)
        record_blob(session, anchor.vector)
    version = latest_version(session, columns["task"]) + 1
    row = SqlBank(**columns, version=version, created_at=utcnow())
    session.add(row)
    session.flush()
    for anchor in stored:
        session.add(
            SqlAnchor(
                bank_id=row.id,
                anchor_id=anchor.payload.anchor_id,
                adapter_blob=anchor.adapter.digest,
                embedding_blob=anchor.vector.digest,
                history_length=anchor.payload.history_length,
                cluster_size=anchor.payload.cluster_size,
            )
        )
    session.flush()
    return bank_entity(session, row)
