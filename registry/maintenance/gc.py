"""Garbage collection: finish interrupted deletions, reclaim superseded rows, cache and blobs."""

from __future__ import annotations

import contextlib
import shutil
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, func, select

from mta.registry.blobrefs import referenced_digests, unreferenced
from mta.registry.context import RegistryContext
from mta.registry.entities import GcResult
from mta.registry.models import SqlBlob, SqlRecipe, SqlStack, SqlUser, as_utc
from mta.registry.users.delete import finish_pending_deletions, user_cache_prefix
from mta.storage import BlobNotFoundError
from mta.storage.cache import TEMP_PREFIX, TRASH_PREFIX, entry_problem

# Superseded stacks and recipes are kept this long for rollback before `gc` reclaims them.
DEFAULT_RETAIN_SUPERSEDED = 7 * 24 * 3600


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
    folders of users that no longer exist, and entries failing their manifest; then delete
    blobs no registry row references, once older than the grace period, which protects
    blobs a running command has written but not yet recorded (blob first, row second).

    Args:
        grace_seconds: keep unreferenced blobs modified less than this long ago.
        retain_superseded_seconds: keep superseded stacks and recipes this long (rollback).
        dry_run: report what would go, delete nothing.
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
    cutoff = now - timedelta(seconds=grace_seconds)
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
    # Rows recorded for blobs that no row uses any more (e.g. a delete interrupted midway).
    stale_rows = [
        d
        for d, created in recorded.items()
        if d not in referenced and (d in doomed or as_utc(created) <= cutoff)
    ]
    rows_deleted = 0
    if not dry_run:
        if stale_rows:
            with ctx.session() as session:
                # Re-check inside the transaction: a writer may have referenced one meanwhile.
                gone = unreferenced(session, stale_rows)
                for digest in gone:
                    session.delete(session.get_one(SqlBlob, digest))
                rows_deleted = len(gone)
            doomed = {d: s for d, s in doomed.items() if d not in set(stale_rows) - set(gone)}
        still_old = {d: s for d, s in doomed.items() if _still_old(ctx, d, cutoff)}
        young += len(doomed) - len(still_old)
        doomed = still_old
        for digest in doomed:
            with contextlib.suppress(FileNotFoundError):
                ctx.store.delete(digest)
    else:
        rows_deleted = len(stale_rows)
    return GcResult(
        deleted=tuple(sorted(doomed)),
        bytes_freed=int(sum(doomed.values())),
        kept_in_grace=young,
        referenced=len(referenced),
        blob_rows_deleted=rows_deleted,
        dry_run=dry_run,
        superseded_stacks=stacks,
        superseded_recipes=recipes,
        cache_entries_removed=cache_removed,
        deletions_finished=finished,
    )


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
    """Remove export-cache entries and temp folders of deleted users, and damaged entries."""
    with ctx.read_session() as session:
        live = {user_cache_prefix(u) for u in session.scalars(select(SqlUser.id))}
    cache = ctx.adapter_cache
    removed = 0
    for name in cache.names():
        if name.startswith(TRASH_PREFIX):
            continue
        key = name.removeprefix(TEMP_PREFIX)
        owned = key.split("--", 1)[0] + "--"
        ours = not owned.startswith("u") or owned in live
        if ours and (name.startswith(TEMP_PREFIX) or entry_problem(cache.path_for(name)) is None):
            continue  # a live user's entry, or a build in progress (swept after an hour)
        removed += 1
        if not dry_run:
            if name.startswith(TEMP_PREFIX):
                shutil.rmtree(cache.root / name, ignore_errors=True)
            else:
                cache.discard(name)
    return removed


def _still_old(ctx: RegistryContext, digest: str, cutoff: datetime) -> bool:
    """Re-check before deleting: a writer that re-put the blob since the listing made it young."""
    try:
        return ctx.store.modified(digest) <= cutoff
    except BlobNotFoundError:
        return True  # already gone; deleting is a no-op
