"""Forget a user: a recorded, resumable deletion that leaves nothing of them behind.

The order makes every crash recoverable and every error clean:

1. Check first (changes nothing): the user exists, no anchor was trained on their history
   unless the caller asked to drop those anchors, and the store accepts deletes.
2. One transaction writes the tombstone (`deletions` row, naming the blobs to remove) and
   deletes the user's rows. From then on the user is "not found" everywhere, and an export
   that races the deletion discards what it cached (see `users.export.export_user`).
3. The user's export-cache entries and staging folders go (with `--drop-anchor`, every
   entry fused from a dropped anchor too: entries record their source blobs), then each
   blob that no row references any more (a blob already missing is nothing to remove).
4. The tombstone goes last, and a WAL checkpoint moves the zeroed pages (SQLite runs with
   `secure_delete`) into the database file. A re-run of `delete_user`, or `gc`, finishes a
   deletion that a crash interrupted anywhere after step 2.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mta.progress import ProgressFn
from mta.registry.blobrefs import unreferenced
from mta.registry.context import RegistryContext
from mta.registry.db import erase_freed_pages
from mta.registry.entities import DeleteResult
from mta.registry.errors import InvalidInputError, NotFoundError
from mta.registry.models import (
    SqlBlob,
    SqlClaim,
    SqlDeletion,
    SqlRecipe,
    SqlStack,
    SqlUser,
    utcnow,
)
from mta.registry.names import validate_user_id
from mta.registry.users.anchor_redaction import (
    AnchorDrop,
    anchors_trained_on,
    apply_drops,
    plan_drops,
)
from mta.storage import BlobNotFoundError

log = logging.getLogger("mta.registry.delete")


def user_cache_prefix(user_id: str) -> str:
    """The export-cache key prefix of a user (ids may hold "@", which cache keys may not)."""
    return f"u{hashlib.sha256(user_id.encode()).hexdigest()[:16]}--"


def is_forgotten(session: Session, user_id: str) -> bool:
    """Whether the user is gone or being deleted (a tombstone is pending)."""
    return session.get(SqlUser, user_id) is None or session.get(SqlDeletion, user_id) is not None


def user_is_gone(ctx: RegistryContext, user_id: str) -> bool:
    """Whether the user no longer exists or is being deleted (one short read)."""
    with ctx.read_session() as session:
        return is_forgotten(session, user_id)


def delete_user(
    ctx: RegistryContext,
    user_id: str,
    *,
    drop_anchors: bool = False,
    progress: ProgressFn | None = None,
) -> DeleteResult:
    """Remove every byte of a user: rows, blobs only they referenced, cache entries.

    Args:
        user_id: a registered user, or one whose deletion a crash interrupted.
        drop_anchors: also erase the anchors trained on this user's history from every bank
            version (their meta-LoRAs, embeddings and index entries); recipes using them are
            dropped, and those users must fuse again. Without it such a user is refused.
        progress: called after each step, e.g. to report or (in tests) to crash mid-way.

    Raises:
        NotFoundError: no such user and no pending deletion.
        InvalidInputError: an anchor was trained on the user's history (see drop_anchors).
        StorageError: the store refuses deletes (checked before anything changes).
    """
    validate_user_id(user_id)
    with ctx.read_session() as session:
        user = session.get(SqlUser, user_id)
        pending = session.get(SqlDeletion, user_id)
        if user is None and pending is None:
            raise NotFoundError(f"no user {user_id!r}")
        candidates = _user_blobs(session, user_id) if user is not None else set()
        trained = anchors_trained_on(session, user_id) if user is not None else []
    if trained and not drop_anchors:
        names = ", ".join(f"{t.task} v{t.version} anchor {t.anchor_id}" for t in trained)
        raise InvalidInputError(
            f"user {user_id!r} trained {names}: that meta-LoRA holds their history; "
            "re-run with --drop-anchor to erase it from every bank version too "
            "(users fused with it must fuse again)"
        )
    drops = plan_drops(ctx, trained) if trained else []
    for drop in drops:
        candidates |= drop.freed_candidates
    ctx.store.check_deletable(candidates)
    rows, refit = (0, ()) if user is None else _tombstone(ctx, user_id, candidates, drops)
    step = _stepper(progress)
    step()
    return _finish(ctx, user_id, rows, refit, drops, step, resumed=user is None)


def finish_pending_deletions(ctx: RegistryContext) -> list[str]:
    """Complete every deletion a crash interrupted (run by `gc`); returns their user ids."""
    with ctx.read_session() as session:
        pending = list(session.scalars(select(SqlDeletion.user_id)))
    for user_id in pending:
        _finish(ctx, user_id, 0, (), [], _stepper(None), resumed=True)
    return pending


def _stepper(progress: ProgressFn | None) -> Callable[[], None]:
    """A no-argument step counter over `progress`."""
    done = [0]

    def step() -> None:
        done[0] += 1
        if progress is not None:
            progress("delete", done[0], done[0])

    return step


def _user_blobs(session: Session, user_id: str) -> set[str]:
    """Digests of the user's profile, embedding and every stack."""
    user = session.get_one(SqlUser, user_id)
    stacks = session.scalars(select(SqlStack.blob).where(SqlStack.user_id == user_id)).all()
    return {user.profile_blob, user.embedding_blob, *stacks}


def _tombstone(
    ctx: RegistryContext, user_id: str, candidates: set[str], drops: list[AnchorDrop]
) -> tuple[int, tuple[str, ...]]:
    """Write the tombstone and delete the user's rows in one transaction."""
    with ctx.session() as session:
        user = session.get(SqlUser, user_id)
        if user is None:  # deleted by a concurrent call meanwhile: finish its job
            return 0, ()
        candidates = candidates | _user_blobs(session, user_id)
        refit, stack_blobs = apply_drops(session, drops, user_id)
        candidates |= stack_blobs
        rows = 1
        for model in (SqlStack, SqlRecipe):
            result = session.execute(delete(model).where(model.user_id == user_id))
            rows += int(result.rowcount or 0)
        # A claim left by a killed bulk job would keep the id in the database.
        session.execute(delete(SqlClaim).where(SqlClaim.user_id == user_id))
        session.delete(user)
        previous = session.get(SqlDeletion, user_id)
        if previous is not None:
            candidates |= set(previous.blobs)
            session.delete(previous)
            session.flush()
        session.add(SqlDeletion(user_id=user_id, blobs=sorted(candidates), requested_at=utcnow()))
    return rows, tuple(sorted(refit - {user_id}))


def _finish(
    ctx: RegistryContext,
    user_id: str,
    rows: int,
    refit: tuple[str, ...],
    drops: list[AnchorDrop],
    step: Callable[[], None],
    *,
    resumed: bool = False,
) -> DeleteResult:
    """Steps 3 and 4: cache, blobs, then the tombstone; then the database's free pages."""
    with ctx.read_session() as session:
        tomb = session.get(SqlDeletion, user_id)
        candidates = list(tomb.blobs) if tomb is not None else []
    cache = ctx.adapter_cache
    removed = cache.discard_prefix(user_cache_prefix(user_id))
    if drops or resumed:
        # Other users' exports fused from an erased anchor hold its weights: they go too (a
        # resumed deletion cannot tell whether it erased anchors, so it assumes it did).
        removed += cache.discard_derived_from(candidates, unrecorded=True)
    step()
    freed, bytes_freed = [], 0
    for digest in candidates:
        size = _forget_blob(ctx, digest)
        if size is not None:
            freed.append(digest)
            bytes_freed += size
        step()
    with ctx.session() as session:
        session.execute(delete(SqlDeletion).where(SqlDeletion.user_id == user_id))
    if not erase_freed_pages(ctx.engine):
        log.warning(
            "Warning: a reader kept the registry's WAL from being checkpointed; the deleted "
            "rows leave its file at the next complete checkpoint (any later deletion or `mta gc`)"
        )
    step()
    return DeleteResult(
        user_id=user_id,
        rows_deleted=rows,
        blobs_deleted=tuple(sorted(freed)),
        bytes_freed=bytes_freed,
        cache_entries_deleted=removed,
        anchors_dropped=tuple(f"{d.task} v{d.version} {d.anchor_id}" for d in drops),
        users_to_refuse=refit,
    )


def _forget_blob(ctx: RegistryContext, digest: str) -> int | None:
    """Delete one blob if no row references it; its recorded size, or None if kept."""
    with ctx.session() as session:
        if not unreferenced(session, [digest]):
            return None  # another user or the bank still uses it (content addressing)
        row = session.get(SqlBlob, digest)
        size = int(row.size) if row is not None else 0
        if row is not None:
            session.delete(row)
    with contextlib.suppress(BlobNotFoundError):  # already gone: nothing to remove
        ctx.store.delete(digest)
    return size
