"""The HTTP API: the registry's service layer over FastAPI, adapters materialized on demand.

The routes live in one module per resource (`routes_banks`, `routes_users`, `routes_jobs`,
`routes_adapter`, `routes_storage`, `routes_bulk`, `routes_ops`); this module joins them
into one app with its error handlers and middleware.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from mta.registry.context import RegistryContext

from .auth_deps import AdminAuth
from .auth_gate import AuthGateMiddleware
from .body_limit import BodyLimitMiddleware
from .errors import install_error_handlers
from .header_limit import HeaderLimitMiddleware
from .metrics import MetricsMiddleware
from .routes_adapter import adapter_router
from .routes_banks import banks_router
from .routes_bulk import bulk_router
from .routes_jobs import jobs_router
from .routes_ops import ops_router
from .routes_params import V1
from .routes_storage import storage_router
from .routes_users import users_router
from .settings import ServerSettings
from .state import AppState

API_VERSION = "1"


def _bulk_v1_router() -> APIRouter:
    """`POST /v1/jobs/adapt`, whose router has no prefix of its own."""
    router = APIRouter(prefix=V1)
    router.include_router(bulk_router(AdminAuth))
    return router


def _routers(state: AppState) -> list[APIRouter]:
    """Every route, by resource; their order is the OpenAPI document's order."""
    return [
        banks_router(),
        users_router(),
        jobs_router(),
        adapter_router(),
        storage_router(),
        _bulk_v1_router(),
        ops_router(state),
    ]


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
    context = ctx or RegistryContext.open(settings.db_url, settings.store_url, settings.cache_dir)
    state = AppState(settings, context)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        _warm_imports()
        yield
        state.close(close_registry=ctx is None)

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
    for router in _routers(state):
        app.include_router(router)
    # The last added is outermost: metrics wrap the header bound, the auth gate and the body
    # bound, so their 431s, 401s and 413s are counted too; headers are bounded before auth.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AuthGateMiddleware, tokens=settings.tokens, router=app.router)
    app.add_middleware(HeaderLimitMiddleware, max_bytes=settings.max_header_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
