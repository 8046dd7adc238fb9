"""The HTTP API: the registry's service layer over FastAPI, adapters materialized on demand."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from mta.progress import ProgressFn
from mta.registry import service
from mta.registry.context import RegistryContext
from mta.registry.db import sqlite_path
from mta.registry.entities import (
    BankDetail,
    BankVersion,
    DeleteResult,
    Recipe,
    User,
    UserDetail,
)
from mta.registry.errors import NotFoundError
from mta.registry.identity import AdapterIdentity
from mta.registry.names import validate_user_id
from mta.storage.errors import StorageError

from .archive import (
    ARCHIVE_MEDIA_TYPE,
    ArchiveCache,
    IdentityCache,
    archive_etag,
    etag_matches,
    tar_adapter_folder,
)
from .auth import Role, authorize
from .auth_gate import AuthGateMiddleware
from .body_limit import BodyLimitMiddleware
from .errors import ApiError, install_error_handlers, one_line
from .jobs import Job, JobRunner
from .metrics import CONTENT_TYPE, Labels, Metrics, MetricsMiddleware
from .routes_bulk import bulk_router
from .schemas import (
    TASK_REGEX,
    USER_ID_REGEX,
    AdaptRequest,
    AddUserRequest,
    FuseRequest,
    HealthResponse,
    JobResponse,
    error_responses,
)
from .settings import ServerSettings, default_lookup_threads

log = logging.getLogger("mta.server")
T = TypeVar("T")

API_VERSION = "1"
# An export can race a concurrent re-adapt or a cache eviction; a few retries settle it.
EXPORT_ATTEMPTS = 3

_bearer = HTTPBearer(
    auto_error=False,
    description="A read token (GET routes) or an admin token (every route).",
)


# Dependencies that do no I/O are `async def`: FastAPI runs a sync one on the threadpool,
# a thread hop per dependency per request that costs more than the check itself.
async def _user_id(
    user_id: Annotated[str, Path(pattern=USER_ID_REGEX, description="The user's id.")],
) -> str:
    # The pattern lets "." and ".." through; the service's rule refuses them (422).
    return validate_user_id(user_id)


UserId = Annotated[str, Depends(_user_id)]
Task = Annotated[str, Path(pattern=TASK_REGEX, description="LaMP task name, e.g. citation.")]


def _require(role: Role) -> Callable[..., Awaitable[None]]:
    async def check(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> None:
        authorize(request.headers.get("authorization"), request.app.state.tokens, role)

    return check


ReadAuth = Depends(_require(Role.READ))
AdminAuth = Depends(_require(Role.ADMIN))


class AppState:
    """Everything the routes share: the registry, the job runner, caches and metrics."""

    def __init__(self, settings: ServerSettings, ctx: RegistryContext) -> None:
        self.settings = settings
        self.ctx = ctx
        self.jobs = JobRunner(settings.workers, max_queued=settings.max_queued_jobs)
        self.archives = ArchiveCache(settings.memory_cache_bytes)
        # Users deleted through this process: a fetch that raced the deletion checks here
        # after caching its archive, and drops it (see `_build_archive`).
        self.forgotten: set[str] = set()
        self.metrics = Metrics()
        self.metrics.add_gauges(self._gauges)
        threads = settings.lookup_threads
        threads = default_lookup_threads(ctx.db_url) if threads is None else threads
        # 0: on the event loop itself (no thread hop, but a slow read stalls every request).
        self.lookups = ThreadPoolExecutor(threads, "mta-lookup") if threads else None
        db_file = sqlite_path(ctx.db_url)
        self.identities = IdentityCache(db_file) if db_file and db_file.exists() else None

    def forget(self, user_id: str) -> None:
        """After a deletion: drop the user's archives, and any a racing fetch adds later."""
        self.forgotten.add(user_id)
        self.archives.discard_owner(user_id)

    def remember(self, user_id: str) -> None:
        """A user id (re-)added: its archives may be cached again."""
        self.forgotten.discard(user_id)

    def _gauges(self) -> Iterable[tuple[str, str, Labels, float]]:
        yield (
            "mta_adapter_memory_cache_bytes",
            "Bytes of adapter archives held in memory.",
            (),
            self.archives.total_bytes,
        )
        for status, count in self.jobs.counts().items():
            yield "mta_jobs", "Adapt jobs kept in memory, by status.", (("status", status),), count

    def adapter_identity(self, user_id: str) -> AdapterIdentity:
        """What fixes a user's exported adapter bytes now: the ETag input (see archive.py).

        The service's own identity read, the one its export-cache key uses, so the two
        agree; kept in `identities` until the registry changes.

        Raises:
            NotFoundError: unknown user, or no recipe yet, so there is no adapter to serve.
        """
        if self.identities is None:
            return service.adapter_identity(self.ctx, user_id)
        version, identity = self.identities.get(user_id)
        if identity is None:
            identity = service.adapter_identity(self.ctx, user_id)
            self.identities.put(user_id, version, identity)
        return identity

    def cached_identity(self, user_id: str) -> AdapterIdentity | None:
        """The user's identity if the registry has not changed since it was read, else None."""
        return self.identities.get(user_id)[1] if self.identities is not None else None

    async def lookup(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a registry read on the lookup threads (FIFO, bounded) and await it."""
        if self.lookups is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.lookups, fn, *args)


def _state(request: Request) -> AppState:
    return request.app.state.mta


def _job_response(job: Job) -> JobResponse:
    return JobResponse.model_validate(job, from_attributes=True)


def _v1_router() -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get(
        "/banks",
        tags=["banks"],
        dependencies=[ReadAuth],
        responses=error_responses(401, 403, 422, 503),
    )
    def list_banks(
        request: Request,
        task: Annotated[str | None, Query(pattern=TASK_REGEX)] = None,
    ) -> list[BankVersion]:
        """Every published bank version, optionally of one task."""
        return service.list_banks(_state(request).ctx, task=task)

    @router.get(
        "/banks/{task}",
        tags=["banks"],
        dependencies=[ReadAuth],
        responses=error_responses(401, 403, 404, 422, 503),
    )
    def get_bank(
        request: Request,
        task: Task,
        ref: Annotated[
            str | None,
            Query(max_length=64, description="Version number or alias (default: latest)."),
        ] = None,
    ) -> BankDetail:
        """One bank version with its anchors."""
        return service.get_bank(_state(request).ctx, task, ref)

    @router.get(
        "/users",
        tags=["users"],
        dependencies=[ReadAuth],
        responses=error_responses(401, 403, 422, 503),
    )
    def list_users(
        request: Request,
        task: Annotated[str | None, Query(pattern=TASK_REGEX)] = None,
    ) -> list[User]:
        """Registered users, optionally of one task."""
        return service.list_users(_state(request).ctx, task=task)

    @router.post(
        "/users",
        tags=["users"],
        status_code=201,
        dependencies=[AdminAuth],
        responses=error_responses(400, 401, 403, 404, 409, 413, 422, 503),
    )
    def add_user(request: Request, body: AddUserRequest) -> User:
        """Register a user: embed their profile and pin their task's bank version."""
        state = _state(request)
        user = service.add_user(
            state.ctx,
            user_id=body.user_id,
            task=body.task,
            profile=body.profile,
            bank_ref=body.bank_ref,
        )
        state.remember(user.user_id)
        return user

    @router.get(
        "/users/{user_id}",
        tags=["users"],
        dependencies=[ReadAuth],
        responses=error_responses(401, 403, 404, 422, 503),
    )
    def get_user(request: Request, user_id: UserId) -> UserDetail:
        """A user with their current recipe and stack."""
        return service.get_user(_state(request).ctx, user_id)

    @router.delete(
        "/users/{user_id}",
        tags=["users"],
        dependencies=[AdminAuth],
        responses=error_responses(401, 403, 404, 422, 503),
    )
    def delete_user(request: Request, user_id: UserId) -> DeleteResult:
        """Delete a user and every byte stored for them, their archives in memory included."""
        state = _state(request)
        result = service.delete_user(state.ctx, user_id)
        state.forget(user_id)
        return result

    @router.post(
        "/users/{user_id}/fuse",
        tags=["users"],
        dependencies=[AdminAuth],
        responses=error_responses(400, 401, 403, 404, 413, 422, 503),
    )
    def fuse_user(request: Request, user_id: UserId, body: FuseRequest | None = None) -> Recipe:
        """Retrieve the user's nearest anchors and store the fusion recipe."""
        body = body or FuseRequest()
        return service.fuse_user(_state(request).ctx, user_id, **body.model_dump())

    @router.post(
        "/users/{user_id}/adapt",
        tags=["jobs"],
        status_code=202,
        dependencies=[AdminAuth],
        responses=error_responses(400, 401, 403, 404, 409, 413, 422, 429, 503),
    )
    def adapt_user(
        request: Request, response: Response, user_id: UserId, body: AdaptRequest
    ) -> JobResponse:
        """Queue the training of the user's stack; poll the returned job."""
        state = _state(request)
        service.get_user(state.ctx, user_id)  # a 404 now, not a failed job later
        params = body.model_dump()

        def run(progress: ProgressFn) -> dict[str, Any]:
            stack = service.adapt_user(state.ctx, user_id, progress=progress, **params)
            return stack.to_dict()

        job = state.jobs.submit("adapt", user_id, params, run)
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return _job_response(job)

    @router.get(
        "/jobs/{job_id}",
        tags=["jobs"],
        dependencies=[ReadAuth],
        responses=error_responses(401, 403, 404, 422),
    )
    def get_job(
        request: Request, job_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
    ) -> JobResponse:
        """A job's status, and its result or error once finished."""
        job = _state(request).jobs.get(job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id!r} (jobs live in memory only)")
        return _job_response(job)

    @router.get(
        "/users/{user_id}/adapter",
        tags=["users"],
        dependencies=[ReadAuth],
        response_class=Response,
        responses={
            200: {
                "description": "The PEFT adapter as a tar archive "
                "(adapter_config.json + adapter_model.safetensors).",
                "content": {ARCHIVE_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
                "headers": {"ETag": {"schema": {"type": "string"}}},
            },
            304: {"description": "Not modified: the If-None-Match ETag is current."},
            **error_responses(401, 403, 404, 422, 500, 503),
        },
    )
    async def get_adapter(
        request: Request,
        user_id: UserId,
        max_rank: Annotated[
            int | None,
            Query(ge=1, le=4096, description="Compress the export to this rank (truncated SVD)."),
        ] = None,
        dtype: Annotated[
            Literal["fp32", "fp16", "bf16"], Query(description="Tensor precision of the files.")
        ] = "fp32",
        if_none_match: Annotated[str | None, Header(max_length=4096)] = None,
    ) -> Response:
        """The user's adapter (fused + stack) as a PEFT folder in a tar archive."""
        return await _adapter_response(_state(request), user_id, max_rank, dtype, if_none_match)

    @router.get(
        "/storage/report",
        tags=["storage"],
        dependencies=[ReadAuth],
        responses=error_responses(401, 403, 503),
    )
    def storage_report(request: Request) -> dict[str, Any]:
        """Bytes by kind, per user, and versus one LoRA per user."""
        return service.storage_report(_state(request).ctx)

    router.include_router(bulk_router(AdminAuth))  # POST /v1/jobs/adapt
    return router


async def _adapter_response(
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
            if identity.user_id in state.forgotten:  # deleted while we built it
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


def _warm_imports() -> None:
    """Import the export path's heavy modules before serving, not in the first request."""
    import mta.export  # noqa: F401 - imported for its side effect (torch, safetensors)
    import mta.fusion  # noqa: F401
    import mta.peft_io  # noqa: F401


def create_app(settings: ServerSettings, *, ctx: RegistryContext | None = None) -> FastAPI:
    """Build the FastAPI application.

    Args:
        settings: registry location, tokens and bounds (see ServerSettings).
        ctx: an already open registry context to serve (tests); by default one is
            opened from ``settings`` and closed at shutdown.

    Returns:
        The app, ready for uvicorn or a TestClient.
    """
    owned = ctx is None
    context = ctx or RegistryContext.open(settings.db_url, settings.store_url, settings.cache_dir)
    state = AppState(settings, context)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        _warm_imports()
        yield
        state.jobs.shutdown(wait=False)
        if state.lookups is not None:
            state.lookups.shutdown(wait=False, cancel_futures=True)
        if state.identities is not None:
            state.identities.close()
        if owned:
            context.close()

    app = FastAPI(
        title="MTA registry",
        version=API_VERSION,
        description="Merge-then-Adapt adapter registry: banks, users, and per-user PEFT "
        "adapters materialized on demand. Auth: `Authorization: Bearer <token>`.",
        lifespan=lifespan,
    )
    app.state.mta = state
    app.state.tokens = settings.tokens
    install_error_handlers(app)
    app.include_router(_v1_router())

    @app.get(
        "/healthz",
        tags=["ops"],
        response_class=Response,
        responses={200: {"model": HealthResponse}, 503: {"model": HealthResponse}},
    )
    def healthz() -> Response:
        """Liveness: the database answers with the current schema and the store is reachable."""
        checks = {"database": "ok", "store": "ok"}
        try:
            from mta.registry.db import check_schema

            check_schema(context.engine)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks["database"] = one_line(exc)
        try:
            context.store.exists("0" * 64)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks["store"] = one_line(exc)
        ok = all(v == "ok" for v in checks.values())
        body = HealthResponse(status="ok" if ok else "unavailable", checks=checks)
        return Response(body.model_dump_json(), 200 if ok else 503, media_type="application/json")

    @app.get(
        "/metrics",
        tags=["ops"],
        dependencies=[ReadAuth],
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}},
            **error_responses(401, 403),
        },
    )
    def metrics() -> Response:
        """Prometheus metrics (text format 0.0.4)."""
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    # The last added is outermost: metrics wrap the auth gate and the size check, so their
    # 401s and 413s are counted too.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AuthGateMiddleware, tokens=settings.tokens, router=app.router)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
