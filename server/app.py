"""The HTTP API: the registry's service layer over FastAPI, adapters materialized on demand."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mta.registry import service
from mta.registry.context import RegistryContext
from mta.registry.entities import (
    BankDetail,
    BankVersion,
    DeleteResult,
    Recipe,
    User,
    UserDetail,
)
from mta.registry.errors import NotFoundError
from mta.registry.identity import AdapterIdentity, identity_of
from mta.registry.names import validate_user_id
from mta.storage.errors import StorageError

from .archive import (
    ARCHIVE_MEDIA_TYPE,
    ArchiveCache,
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
from .settings import ServerSettings

log = logging.getLogger("mta.server")

API_VERSION = "1"
# An export can race a concurrent re-adapt or a cache eviction; a few retries settle it.
EXPORT_ATTEMPTS = 3

_bearer = HTTPBearer(
    auto_error=False,
    description="A read token (GET routes) or an admin token (every route).",
)


def _user_id(
    user_id: Annotated[str, Path(pattern=USER_ID_REGEX, description="The user's id.")],
) -> str:
    # The pattern lets "." and ".." through; the service's rule refuses them (422).
    return validate_user_id(user_id)


UserId = Annotated[str, Depends(_user_id)]
Task = Annotated[str, Path(pattern=TASK_REGEX, description="LaMP task name, e.g. citation.")]


def _require(role: Role) -> Callable[..., None]:
    def check(
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
        self.metrics = Metrics()
        # Anchor adapter digests per (task, version): bank versions are immutable.
        self._bank_digests: dict[tuple[str, int], tuple[dict[str, str], str]] = {}
        self.metrics.add_gauges(self._gauges)

    def _gauges(self) -> Iterable[tuple[str, str, Labels, float]]:
        yield (
            "mta_adapter_memory_cache_bytes",
            "Bytes of adapter archives held in memory.",
            (),
            self.archives.total_bytes,
        )
        for status, count in self.jobs.counts().items():
            yield "mta_jobs", "Adapt jobs kept in memory, by status.", (("status", status),), count

    def bank_facts(self, task: str, version: int) -> tuple[dict[str, str], str]:
        """Anchor id -> adapter digest, and the base model, of a bank version (cached)."""
        key = (task, version)
        if key not in self._bank_digests:
            bank = service.get_bank(self.ctx, task, str(version))
            digests = {a.anchor_id: a.adapter_blob for a in bank.anchors}
            if len(self._bank_digests) > 1024:
                self._bank_digests.clear()  # a crude bound; refilled by one query per bank
            self._bank_digests[key] = (digests, bank.base_model)
        return self._bank_digests[key]

    def adapter_identity(self, detail: UserDetail) -> AdapterIdentity:
        """What fixes a user's exported adapter bytes: the ETag input (see archive.py).

        Built by the same `identity_of` as the service's export-cache key, so the two agree.

        Raises:
            NotFoundError: the user has no recipe yet, so there is no adapter to serve.
        """
        if detail.recipe is None:
            raise NotFoundError(f"user {detail.user_id!r} has no recipe yet; fuse first")
        digests, base_model = self.bank_facts(detail.recipe.task, detail.recipe.bank_version)
        return identity_of(detail.recipe, detail.stack, digests, base_model)


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
        return service.add_user(
            _state(request).ctx,
            user_id=body.user_id,
            task=body.task,
            profile=body.profile,
            bank_ref=body.bank_ref,
        )

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
        """Delete a user and every byte stored for them."""
        return service.delete_user(_state(request).ctx, user_id)

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

        def run(progress: Callable[[str, int, int], None]) -> dict[str, Any]:
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
    def get_adapter(
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
        return _adapter_response(_state(request), user_id, max_rank, dtype, if_none_match)

    @router.get(
        "/storage/report",
        tags=["storage"],
        dependencies=[ReadAuth],
        responses=error_responses(401, 403, 503),
    )
    def storage_report(request: Request) -> dict[str, Any]:
        """Bytes by kind, per user, and versus one LoRA per user."""
        return service.storage_report(_state(request).ctx)

    return router


def _adapter_response(
    state: AppState, user_id: str, max_rank: int | None, dtype: str, if_none_match: str | None
) -> Response:
    """Answer an adapter fetch: 304, a cached archive, or a fresh export."""
    for _ in range(EXPORT_ATTEMPTS):
        detail = service.get_user(state.ctx, user_id)
        etag = archive_etag(state.adapter_identity(detail), max_rank, dtype)
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        if etag_matches(if_none_match, etag):
            state.metrics.count_cache("not_modified")
            return Response(status_code=304, headers=headers)
        data = state.archives.get(etag)
        if data is None:
            with state.archives.building(etag):
                data = state.archives.get(etag)  # built by a concurrent request meanwhile?
                if data is None:
                    data = _export_archive(state, detail, max_rank, dtype)
                    if data is None:
                        continue  # the user changed under us: recompute the ETag
                    state.archives.put(etag, data)
                    state.metrics.count_cache("miss")
                else:
                    state.metrics.count_cache("hit")
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


def _export_archive(
    state: AppState, detail: UserDetail, max_rank: int | None, dtype: str
) -> bytes | None:
    """Materialize and tar the export; None if it no longer matches ``detail``."""
    try:
        export = service.export_user(
            state.ctx, detail.user_id, None, max_rank=max_rank, dtype=dtype
        )
        data = tar_adapter_folder(export.path)
    except FileNotFoundError as error:
        if isinstance(error, StorageError):
            raise  # a blob missing from the store is an integrity error, not a race
        return None  # the export cache evicted the folder between export and read
    expected_stack = detail.stack.stack_id if detail.stack is not None else None
    expected_recipe = detail.recipe.recipe_id if detail.recipe is not None else None
    if export.stack_id != expected_stack or (
        expected_recipe is not None and export.recipe_id != expected_recipe
    ):
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
