"""Blob bookkeeping: write a blob before its row, record it, and find what rows reference.

Write order (DESIGN §4): `put_blob` stores the bytes first; the caller then records the blob
(`record_blob`) and inserts the rows that reference it in one transaction. A crash in between
leaves an unreferenced blob, which `gc` removes after its grace period.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from mta.registry.context import RegistryContext
from mta.registry.models import BLOB_REFERENCES, SqlBlob, utcnow

# Blob kinds recorded in the `blobs` table, and the report bucket each one counts under.
KIND_ANCHOR_ADAPTER = "anchor_adapter"
KIND_ANCHOR_EMBEDDING = "anchor_embedding"
KIND_BANK_INDEX = "bank_index"
KIND_PROFILE = "profile"
KIND_USER_EMBEDDING = "user_embedding"
KIND_STACK = "stack"
REPORT_BUCKET = {
    KIND_ANCHOR_ADAPTER: "bank",
    KIND_ANCHOR_EMBEDDING: "bank",
    KIND_BANK_INDEX: "bank",
    KIND_STACK: "stacks",
    KIND_USER_EMBEDDING: "embeddings",
    KIND_PROFILE: "profiles",
}


class PendingBlob:
    """A blob already in the store whose `blobs` row is still to be written."""

    __slots__ = ("digest", "size", "kind", "data")

    def __init__(self, digest: str, size: int, kind: str, data: bytes) -> None:
        """Remember a stored blob's digest, size, kind and bytes."""
        self.digest = digest
        self.size = size
        self.kind = kind
        self.data = data


def put_blob(ctx: RegistryContext, data: bytes, kind: str) -> PendingBlob:
    """Store `data` (idempotent, content-addressed); the row is recorded later by `record_blob`."""
    digest = ctx.store.put_bytes(data)
    return PendingBlob(digest, len(data), kind, data)


def reassert_blobs(ctx: RegistryContext, blobs: Iterable[PendingBlob]) -> None:
    """After the rows committed, re-store any blob that vanished meanwhile.

    `put_bytes` of a blob that already exists refreshes its modification time and `gc`
    re-checks that time just before deleting, but a `gc` that re-checked a moment before
    our put can still delete it. Once our rows are committed the blob is referenced and
    no later `gc` touches it; writing it back closes that last window.
    """
    for blob in blobs:
        if not ctx.store.exists(blob.digest):
            ctx.store.put_bytes(blob.data)


def record_blob(session: Session, blob: PendingBlob) -> str:
    """Insert the `blobs` row unless another writer already did; returns the digest."""
    values = {
        "digest": blob.digest,
        "algo": "sha256",
        "size": blob.size,
        "kind": blob.kind,
        "created_at": utcnow(),
    }
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        # Content addressing makes concurrent inserts of one digest normal (two users with the
        # same profile): skip the row instead of failing the whole transaction.
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        session.execute(insert(SqlBlob).values(**values).on_conflict_do_nothing())
    elif session.get(SqlBlob, blob.digest) is None:
        session.add(SqlBlob(**values))
        session.flush()
    return blob.digest


def referenced_digests(session: Session) -> set[str]:
    """Every digest some registry row points at."""
    found: set[str] = set()
    for model, column in BLOB_REFERENCES:
        found.update(session.scalars(select(getattr(model, column)).distinct()))
    return found


def unreferenced(session: Session, digests: Iterable[str]) -> list[str]:
    """The digests among `digests` that no registry row references any more."""
    candidates = set(digests)
    if not candidates:
        return []
    still: set[str] = set()
    for model, column in BLOB_REFERENCES:
        attr = getattr(model, column)
        still.update(session.scalars(select(attr).where(attr.in_(candidates)).distinct()))
    return sorted(candidates - still)
