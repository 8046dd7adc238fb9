"""The HTTP API: the registry's service layer over FastAPI, adapters materialized on demand."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Header, Path, Query, Request, Response

from mta.progress import ProgressFn
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

from .adapter_fetch import adapter_response
from .archive import ARCHIVE_MEDIA_TYPE
from .auth_gate import AuthGateMiddleware
from .body_limit import BodyLimitMiddleware
from .errors import ApiError, install_error_handlers, one_line
from .metrics import CONTENT_TYPE, MetricsMiddleware
from .routes_bulk import bulk_router
from .schemas import (
    TASK_REGEX,
    AdaptRequest,
    AddUserRequest,
    FuseRequest,
    HealthResponse,
    JobResponse,
    error_responses,
)
from .settings import ServerSettings
from .state import AdminAuth, AppState, ReadAuth, Task, UserId, app_state, job_response

log = logging.getLogger("mta.server")

API_VERSION = "1"


# The route table: FastAPI registers routes as closures on one router. It is long only
# because it lists every route; each route is a few lines that call one service function.
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
        return service.list_banks(app_state(request).ctx, task=task)

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
        return service.get_bank(app_state(request).ctx, task, ref)

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
        return service.list_users(app_state(request).ctx, task=task)

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
            app_state(request).ctx,
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
        return service.get_user(app_state(request).ctx, user_id)

    @router.delete(
        "/users/{user_id}",
        tags=["users"],
        dependencies=[AdminAuth],
        responses=error_responses(401, 403, 404, 422, 503),
    )
    def delete_user(request: Request, user_id: UserId) -> DeleteResult:
        """Delete a user and every byte stored for them, their archives in memory included."""
        state = app_state(request)
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
        return service.fuse_user(app_state(request).ctx, user_id, **body.model_dump())

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
        state = app_state(request)
        service.get_user(state.ctx, user_id)  # a 404 now, not a failed job later
        params = body.model_dump()

        def run(progress: ProgressFn) -> dict[str, Any]:
            stack = service.adapt_user(state.ctx, user_id, progress=progress, **params)
            return stack.to_dict()

        job = state.jobs.submit("adapt", user_id, params, run)
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return job_response(job)

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
        job = app_state(request).jobs.get(job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id!r} (jobs live in memory only)")
        return job_response(job)

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
        state = app_state(request)
        return await adapter_response(state, user_id, max_rank, dtype, if_none_match)

    @router.get(
        "/storage/report",
        tags=["storage"],
        dependencies=[ReadAuth],
        responses=error_responses(401, 403, 503),
    )
    def storage_report(request: Request) -> dict[str, Any]:
        """Bytes by kind, per user, and versus one LoRA per user."""
        return service.storage_report(app_state(request).ctx)

    router.include_router(bulk_router(AdminAuth))  # POST /v1/jobs/adapt
    return router


def _warm_imports() -> None:
    """Import the export path's heavy modules before serving, not in the first request."""
    import mta.export  # noqa: F401 - imported for its side effect (torch, safetensors)
    import mta.fusion  # noqa: F401
    import mta.peft_io  # noqa: F401


def _add_ops_routes(app: FastAPI, state: AppState) -> None:
    """`/healthz` (no auth: load balancers probe it) and `/metrics` (read token)."""
    context = state.ctx

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

    _add_ops_routes(app, state)
    # The last added is outermost: metrics wrap the auth gate and the size check, so their
    # 401s and 413s are counted too.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AuthGateMiddleware, tokens=settings.tokens, router=app.router)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
