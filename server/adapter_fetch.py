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
from mta.registry.identity import AdapterIdentity
from mta.storage.errors import StorageError

from .archive import ARCHIVE_MEDIA_TYPE, archive_etag, etag_matches, tar_adapter_folder
from .errors import ApiError
from .state import AppState

# An export can race a concurrent re-adapt or a cache eviction; a few retries settle it.
EXPORT_ATTEMPTS = 3


async def adapter_response(
    state: AppState, user_id: str, max_rank: int | None, dtype: str, if_none_match: str | None
) -> Response:
    """Answer an adapter fetch: 304, a cached archive, or a fresh export.

    Runs on the event loop: an identity read since the registry last changed is reused
    (`IdentityCache`), a fresh read goes to the lookup threads and a build to the
    threadpool, so a warm 304 or archive-cache hit never leaves the loop.
    """
    for _ in range(EXPORT_ATTEMPTS):
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
            if data is None:
                continue  # the user changed under us: recompute the ETag
        else:
            state.metrics.count_cache("hit")
        state.metrics.count_bytes_served(len(data))
        headers["Content-Disposition"] = f'attachment; filename="{user_id}.tar"'
        return Response(content=data, media_type=ARCHIVE_MEDIA_TYPE, headers=headers)
    raise ApiError(
        503,
        "busy",
        f"user {user_id!r} kept changing during the export; retry",
        {"Retry-After": "1"},
    )


def _build_archive(
    state: AppState, etag: str, identity: AdapterIdentity, max_rank: int | None, dtype: str
) -> bytes | None:
    """The archive of ``etag``, built once however many requests want it (a thread's work)."""
    with state.archives.building(etag):
        data = state.archives.get(etag)  # built by a concurrent request meanwhile?
        if data is not None:
            state.metrics.count_cache("hit")
            return data
        data = _export_archive(state, identity, max_rank, dtype)
        if data is not None:
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
) -> bytes | None:
    """Materialize and tar the export; None if it no longer matches ``identity``."""
    try:
        export = service.export_user(
            state.ctx, identity.user_id, None, max_rank=max_rank, dtype=dtype
        )
        data = tar_adapter_folder(export.path)
    except FileNotFoundError as error:
        if isinstance(error, StorageError):
            raise  # a blob missing from the store is an integrity error, not a race
        return None  # the export cache evicted the folder between export and read
    if (export.recipe_id, export.stack_id) != (identity.recipe_id, identity.stack_id):
        return None
    return data
