"""Garbage collection: finish interrupted deletions, reclaim superseded rows, cache and blobs."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import delete, func, select

from mta.registry.blobrefs import referenced_digests, unreferenced
from mta.registry.context import RegistryContext
from mta.registry.db import erase_freed_pages
from mta.registry.entities import GcResult
from mta.registry.jobs.claims import drop_expired_claims
from mta.registry.models import SqlBlob, SqlRecipe, SqlStack, SqlUser, as_utc
from mta.registry.users.delete import finish_pending_deletions, user_cache_prefix
from mta.storage import BlobNotFoundError
from mta.storage.cache import TEMP_PREFIX, TRASH_PREFIX, entry_problem, entry_sources

# Superseded stacks and recipes are kept this long for rollback before `gc` reclaims them.
DEFAULT_RETAIN_SUPERSEDED = 7 * 24 * 3600


@dataclass(frozen=True)
class _BlobSweep:
    """What the blob pass of `gc` deleted (or, dry, would delete) and kept."""

    deleted: dict[str, int]  # digest -> size
    kept_in_grace: int
    referenced: int
    blob_rows_deleted: int


def gc(
    ctx: RegistryContext,
    *,
    grace_seconds: int = 3600,
    retain_superseded_seconds: int = DEFAULT_RETAIN_SUPERSEDED,
    dry_run: bool = False,
) -> GcResult:
    """Reclaim what nothing serves: interrupted deletions, superseded stacks, stale cache, blobs.

    In order: finish user deletions a crash interrupted; delete superseded stacks (not the
    user's current one) and recipes (not the user's latest, with no stack left) created
    longer than `retain_superseded_seconds` ago; remove export-cache entries and temp
    folders of users that no longer exist, entries failing their manifest, and entries
    derived from a blob no row holds (an erased anchor) or not recording their sources;
    then delete blobs no registry row references, once older than the grace period, which
    protects blobs a running command has written but not yet recorded (blob first, row
    second). Last, on SQLite, checkpoint the WAL so deleted rows leave the files.

    Args:
        grace_seconds: keep unreferenced blobs modified less than this long ago.
        retain_superseded_seconds: keep superseded stacks and recipes this long (rollback).
        dry_run: report what would go, delete nothing.

    Raises:
        ValueError: a negative duration.
    """
    if grace_seconds < 0:
        raise ValueError(f"grace_seconds must be >= 0, got {grace_seconds}")
    if retain_superseded_seconds < 0:
        raise ValueError(f"retain_superseded_seconds must be >= 0, got {retain_superseded_seconds}")
    finished = () if dry_run else tuple(finish_pending_deletions(ctx))
    now = datetime.now(timezone.utc)
    stacks, recipes = _reclaim_superseded(
        ctx, now - timedelta(seconds=retain_superseded_seconds), dry_run
    )
    cache_removed = _sweep_cache(ctx, dry_run)
    blobs = _sweep_blobs(ctx, now - timedelta(seconds=grace_seconds), dry_run)
    if not dry_run:
        drop_expired_claims(ctx)  # a killed bulk job's leases, long run out
        erase_freed_pages(ctx.engine)  # deleted rows leave the SQLite files too
    return GcResult(
        deleted=tuple(sorted(blobs.deleted)),
        bytes_freed=int(sum(blobs.deleted.values())),
        kept_in_grace=blobs.kept_in_grace,
        referenced=blobs.referenced,
        blob_rows_deleted=blobs.blob_rows_deleted,
        dry_run=dry_run,
        superseded_stacks=stacks,
        superseded_recipes=recipes,
        cache_entries_removed=cache_removed,
        deletions_finished=finished,
    )


def _sweep_blobs(ctx: RegistryContext, cutoff: datetime, dry_run: bool) -> _BlobSweep:
    """Delete the blobs no row references and last written before `cutoff`, and their rows.

    A `blobs` row is deleted when no row uses its blob any more (e.g. a delete interrupted
    midway) and the blob is doomed or the row older than `cutoff`.
    """
    with ctx.read_session() as session:
        referenced = referenced_digests(session)
        recorded = dict(session.execute(select(SqlBlob.digest, SqlBlob.created_at)).tuples().all())
    doomed: dict[str, int] = {}
    young = 0
    for info in ctx.store.iter_blobs():
        if info.digest in referenced:
            continue
        if info.modified > cutoff:
            young += 1
        else:
            doomed[info.digest] = info.size
    stale_rows = [
        d
        for d, created in recorded.items()
        if d not in referenced and (d in doomed or as_utc(created) <= cutoff)
    ]
    if dry_run:
        return _BlobSweep(doomed, young, len(referenced), len(stale_rows))
    revived = _delete_blob_rows(ctx, stale_rows)
    doomed = {d: s for d, s in doomed.items() if d not in revived}
    still_old = {d: s for d, s in doomed.items() if _still_old(ctx, d, cutoff)}
    young += len(doomed) - len(still_old)
    for digest in still_old:
        with contextlib.suppress(FileNotFoundError):
            ctx.store.delete(digest)
    return _BlobSweep(still_old, young, len(referenced), len(stale_rows) - len(revived))


def _delete_blob_rows(ctx: RegistryContext, digests: list[str]) -> set[str]:
    """Delete these `blobs` rows unless referenced now; returns the ones a writer took back."""
    if not digests:
        return set()
    with ctx.session() as session:
        # Re-check inside the transaction: a writer may have referenced one meanwhile.
        gone = unreferenced(session, digests)
        for digest in gone:
            session.delete(session.get_one(SqlBlob, digest))
    return set(digests) - set(gone)


def _reclaim_superseded(ctx: RegistryContext, cutoff: datetime, dry_run: bool) -> tuple[int, int]:
    """Delete stacks and recipes that are no longer served and older than `cutoff`."""
    with ctx.session() as session:
        latest = dict(
            session.execute(
                select(SqlRecipe.user_id, func.max(SqlRecipe.id)).group_by(SqlRecipe.user_id)
            )
            .tuples()
            .all()
        )
        current = set(
            session.scalars(
                select(func.max(SqlStack.id))
                .where(SqlStack.recipe_id.in_(latest.values()))
                .group_by(SqlStack.recipe_id)
            )
        )
        stacks = [
            stack_id
            for stack_id, created in session.execute(select(SqlStack.id, SqlStack.created_at))
            if stack_id not in current and as_utc(created) <= cutoff
        ]
        if not dry_run and stacks:
            session.execute(delete(SqlStack).where(SqlStack.id.in_(stacks)))
        used = set(session.scalars(select(SqlStack.recipe_id).distinct()))
        recipes = [
            recipe_id
            for recipe_id, created in session.execute(select(SqlRecipe.id, SqlRecipe.created_at))
            if recipe_id not in set(latest.values())
            and recipe_id not in used
            and as_utc(created) <= cutoff
        ]
        if not dry_run and recipes:
            session.execute(delete(SqlRecipe).where(SqlRecipe.id.in_(recipes)))
    return len(stacks), len(recipes)


def _sweep_cache(ctx: RegistryContext, dry_run: bool) -> int:
    """Remove export-cache entries and temp folders of deleted users, damaged entries, and
    entries derived from blobs no row holds any more (an erased anchor, a reclaimed stack)
    or that do not record what they were derived from (written by an older version)."""
    cache = ctx.adapter_cache
    names = cache.names()
    # Read after listing: an entry listed was built from rows committed before the listing.
    with ctx.read_session() as session:
        live = {user_cache_prefix(u) for u in session.scalars(select(SqlUser.id))}
        held = referenced_digests(session)
    removed = 0
    for name in names:
        if name.startswith(TRASH_PREFIX):
            continue
        key = name.removeprefix(TEMP_PREFIX)
        owned = key.split("--", 1)[0] + "--"
        ours = not owned.startswith("u") or owned in live
        if ours and (name.startswith(TEMP_PREFIX) or _entry_is_sound(cache.path_for(name), held)):
            continue  # a live user's entry, or a build in progress (swept after an hour)
        removed += 1
        if not dry_run:
            if name.startswith(TEMP_PREFIX):
                shutil.rmtree(cache.root / name, ignore_errors=True)
            else:
                cache.discard(name)
    return removed


def _entry_is_sound(path: Path, held: set[str]) -> bool:
    """Whether an entry's files match its manifest and every blob it was derived from is held."""
    sources = entry_sources(path)
    return entry_problem(path) is None and sources is not None and held.issuperset(sources)


def _still_old(ctx: RegistryContext, digest: str, cutoff: datetime) -> bool:
    """Re-check before deleting: a writer that re-put the blob since the listing made it young."""
    try:
        return ctx.store.modified(digest) <= cutoff
    except BlobNotFoundError:
        return True  # already gone; deleting is a no-op
