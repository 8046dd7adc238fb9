"""Answering an adapter fetch: 304, an archive from memory, or a fresh export (built once).

Runs on the event loop: an identity read since the registry last changed is reused
(`IdentityCache`), a fresh read goes to the lookup threads and a build to the threadpool,
so a warm 304 or archive-cache hit never leaves the loop. `adapter_name_info` answers
`GET .../adapter-name` from the same one identity read.
"""

from __future__ import annotations

from fastapi import Response
from starlette.concurrency import run_in_threadpool

from mta.registry import service
from mta.registry.errors import NotFoundError
from mta.registry.service import AdapterIdentity
from mta.storage.base import sha256_bytes
from mta.storage.errors import StorageError

from .archive import (
    ADAPTER_NAME_HEADER,
    ARCHIVE_MEDIA_TYPE,
    DIGEST_HEADER,
    adapter_name,
    adapter_version,
    archive_etag,
    archive_rank,
    etag_matches,
    repr_digest,
    tar_adapter_folder,
)
from .errors import ApiError
from .schemas import AdapterNameResponse
from .state import AppState


async def adapter_response(
    state: AppState,
    user_id: str,
    max_rank: int | None,
    dtype: str,
    if_none_match: str | None,
    version: str | None = None,
) -> Response:
    """Answer an adapter fetch: 304, a cached archive, or a fresh export.

    The identity is read once (or taken from `IdentityCache`); the ETag, the name, the
    archive and the export all derive from that one value, so the bytes always match the
    ETag and the name even when the user is re-adapted while the archive is built.

    Raises:
        ApiError: 410 when ``version`` is given and is not the user's current version.
    """
    identity = await _identity(state, user_id)
    name = adapter_name(identity)
    if version is not None and version != adapter_version(identity):
        raise ApiError(
            410,
            "stale_version",
            f"version {version} of user {user_id!r} is not current (now {name}); "
            f"ask GET /v1/users/{user_id}/adapter-name",
            headers={ADAPTER_NAME_HEADER: name, "Cache-Control": "no-store"},
        )
    etag = archive_etag(identity, max_rank, dtype)
    headers = {"ETag": etag, "Cache-Control": "private, no-cache", ADAPTER_NAME_HEADER: name}
    if etag_matches(if_none_match, etag):
        state.metrics.count_cache("not_modified")
        return Response(status_code=304, headers=headers)
    entry = state.archives.get_entry(etag)
    if entry is None:
        entry = await run_in_threadpool(_build_archive, state, etag, identity, max_rank, dtype)
    else:
        state.metrics.count_cache("hit")
    data, digest = entry
    state.metrics.count_bytes_served(len(data))
    headers[DIGEST_HEADER] = repr_digest(digest)
    headers["Content-Disposition"] = f'attachment; filename="{user_id}.tar"'
    return Response(content=data, media_type=ARCHIVE_MEDIA_TYPE, headers=headers)


async def adapter_name_info(
    state: AppState, user_id: str, max_rank: int | None, dtype: str
) -> AdapterNameResponse:
    """The user's current adapter name and what a fetch with these options would return.

    The archive is taken from memory or built (as a fetch would build it), so the rank and
    size describe the exact bytes the adapter route serves under the returned ETag.
    """
    identity = await _identity(state, user_id)
    etag = archive_etag(identity, max_rank, dtype)
    entry = state.archives.get_entry(etag)
    if entry is None:
        entry = await run_in_threadpool(_build_archive, state, etag, identity, max_rank, dtype)
    data, digest = entry
    return AdapterNameResponse(
        user_id=user_id,
        name=adapter_name(identity),
        version=adapter_version(identity),
        etag=etag,
        rank=archive_rank(data),
        dtype=dtype,
        max_rank=max_rank,
        bytes=len(data),
        sha256=digest,
        base_model=identity.base_model,
    )


async def _identity(state: AppState, user_id: str) -> AdapterIdentity:
    """The user's identity: from `IdentityCache`, else one read on the lookup threads."""
    identity = state.cached_identity(user_id)
    if identity is None:
        identity = await state.lookup(state.adapter_identity, user_id)
    return identity


def _build_archive(
    state: AppState, etag: str, identity: AdapterIdentity, max_rank: int | None, dtype: str
) -> tuple[bytes, str]:
    """The archive of ``etag`` and its sha256, built once however many requests want it."""
    with state.archives.building(etag):
        entry = state.archives.get_entry(etag)  # built by a concurrent request meanwhile?
        if entry is not None:
            state.metrics.count_cache("hit")
            return entry
        data = _export_archive(state, identity, max_rank, dtype)
        digest = sha256_bytes(data)
        state.archives.put(etag, data, owner=identity.user_id, digest=digest)
        # Re-read after caching: a deletion that committed while we built it has
        # already swept this process's archives, so the entry is ours to drop.
        if service.user_is_gone(state.ctx, identity.user_id):
            state.archives.discard_owner(identity.user_id)
            raise NotFoundError(f"no user {identity.user_id!r}")
        state.metrics.count_cache("miss")
        return data, digest


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
