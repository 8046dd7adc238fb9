"""`mta fsck`: every blob a row references is in the store, intact and of its recorded size.

Also lists orphan blobs (in the store, recorded nowhere: `gc`'s business, not an error),
export-cache entries whose files no longer match their manifest, and entries derived from
a blob that no row holds any more (an erased anchor's weights still inside them).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from mta.errors import one_line
from mta.registry.blobrefs import referenced_digests
from mta.registry.context import RegistryContext
from mta.registry.entities import FsckProblem, FsckReport
from mta.registry.models import BLOB_REFERENCES, SqlBlob
from mta.storage import BlobCorruptedError, BlobNotFoundError
from mta.storage.cache import entry_problem, entry_sources

# One blob reference: (table, row key, column, digest).
BlobRef = tuple[str, str, str, str]


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
        refs = _blob_refs(session)
    referenced = {ref[3] for ref in refs}
    unreferenced_rows = sorted(set(sizes) - referenced)
    status = {
        digest: _check_blob(ctx, digest, sizes.get(digest), verify)
        for digest in sorted(referenced | set(sizes))
    }
    # A recorded blob no row uses is checked too: its `blobs` row is what points at it.
    refs += [("blobs", digest, "digest", digest) for digest in unreferenced_rows]
    missing: list[FsckProblem] = []
    corrupt: list[FsckProblem] = []
    for table, row_key, column, digest in refs:
        problem = status[digest]
        if problem is not None:
            entry = FsckProblem(table, row_key, column, digest, problem[0], problem[1])
            (missing if problem[0] == "missing" else corrupt).append(entry)
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


def _blob_refs(session: Session) -> list[BlobRef]:
    """Every blob reference of every row, table by table (models.BLOB_REFERENCES)."""
    refs: list[BlobRef] = []
    for model, column in BLOB_REFERENCES:
        key = model.__mapper__.primary_key[0]
        for row_key, digest in session.execute(select(key, getattr(model, column))):
            refs.append((model.__tablename__, str(row_key), column, digest))
    return refs


def _check_blob(
    ctx: RegistryContext, digest: str, expected_size: int | None, verify: bool
) -> tuple[str, str] | None:
    """(problem, detail) for one blob, or None when it is intact."""
    try:
        size = ctx.store.size(digest)
        if expected_size is not None and size != expected_size:
            return "size_mismatch", f"store has {size} bytes, registry recorded {expected_size}"
        if verify:
            ctx.store.verify(digest)
    except BlobNotFoundError:
        return "missing", "not in the store"
    except BlobCorruptedError as error:
        return "corrupt", one_line(error)
    return None


def _check_cache(ctx: RegistryContext) -> list[FsckProblem]:
    """Export-cache entries whose files no longer match their manifest, or that were derived
    from a blob no registry row holds any more (e.g. an anchor erased by `delete --drop-anchor`:
    the entry still holds its weights; `mta gc` removes it)."""
    cache = ctx.adapter_cache
    keys = cache.keys()
    with ctx.read_session() as session:  # after the listing: no entry is newer than this read
        held = referenced_digests(session)
    problems = []
    for key in keys:
        path = cache.path_for(key)
        problem = entry_problem(path)
        if problem is not None:
            problems.append(FsckProblem("cache", key, "files", "", "corrupt", problem))
            continue
        for digest in sorted(set(entry_sources(path) or ()) - held):
            detail = "derived from a blob no registry row holds (erased); `mta gc` removes it"
            problems.append(FsckProblem("cache", key, "sources", digest, "erased_source", detail))
    return problems
