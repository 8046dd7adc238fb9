"""Answering an adapter fetch: 304, an archive from memory, or a fresh export (built once).

Runs on the event loop: an identity read since the registry last changed is reused
(`IdentityCache`), a fresh read goes to the lookup threads and a build to the threadpool,
so a warm 304 or archive-cache hit never leaves the loop.
"""

from __future__ import annotations

from fastapi import Response
from starlette.concurrency import run_in_threadpool

from mta.registry import service
from mta.registry.errors import NotFoundError
from mta.registry.service import AdapterIdentity
from mta.storage.errors import StorageError

from .archive import ARCHIVE_MEDIA_TYPE, archive_etag, etag_matches, tar_adapter_folder
from .state import AppState


async def adapter_response(
    state: AppState, user_id: str, max_rank: int | None, dtype: str, if_none_match: str | None
) -> Response:
    """Answer an adapter fetch: 304, a cached archive, or a fresh export.

    The identity is read once (or taken from `IdentityCache`); the ETag, the archive and
    the export all derive from that one value, so the bytes always match the ETag even
    when the user is re-adapted while the archive is built.
    """
    identity = state.cached_identity(user_id)
    if identity is None:
        identity = await state.lookup(state.adapter_identity, user_id)
    etag = archive_etag(identity, max_rank, dtype)
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if etag_matches(if_none_match, etag):
        state.metrics.count_cache("not_modified")
        return Response(status_code=304, headers=headers)
    data = state.archives.get(etag)
    if data is None:
        data = await run_in_threadpool(_build_archive, state, etag, identity, max_rank, dtype)
    else:
        state.metrics.count_cache("hit")
    state.metrics.count_bytes_served(len(data))
    headers["Content-Disposition"] = f'attachment; filename="{user_id}.tar"'
    return Response(content=data, media_type=ARCHIVE_MEDIA_TYPE, headers=headers)


def _build_archive(
    state: AppState, etag: str, identity: AdapterIdentity, max_rank: int | None, dtype: str
) -> bytes:
    """The archive of ``etag``, built once however many requests want it (a thread's work)."""
    with state.archives.building(etag):
        data = state.archives.get(etag)  # built by a concurrent request meanwhile?
        if data is not None:
            state.metrics.count_cache("hit")
            return data
        data = _export_archive(state, identity, max_rank, dtype)
        state.archives.put(etag, data, owner=identity.user_id)
        # Re-read after caching: a deletion that committed while we built it has
        # already swept this process's archives, so the entry is ours to drop.
        if service.user_is_gone(state.ctx, identity.user_id):
            state.archives.discard_owner(identity.user_id)
            raise NotFoundError(f"no user {identity.user_id!r}")
        state.metrics.count_cache("miss")
        return data


def _export_archive(
    state: AppState, identity: AdapterIdentity, max_rank: int | None, dtype: str
) -> bytes:
    """Materialize the identity's export and tar it.

    The export cache may evict the folder between the export and the read; the export is
    then rebuilt once from the same identity (its blobs are immutable).
    """
    export = service.export_user(state.ctx, identity, None, max_rank=max_rank, dtype=dtype)
    try:
        return tar_adapter_folder(export.path)
    except FileNotFoundError as error:
        if isinstance(error, StorageError):
            raise  # a blob missing from the store is an integrity error, not an eviction
    export = service.export_user(state.ctx, identity, None, max_rank=max_rank, dtype=dtype)
    return tar_adapter_folder(export.path)
