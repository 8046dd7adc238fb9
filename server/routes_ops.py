"""The operator's routes, outside `/v1`: `/healthz` (no auth) and `/metrics` (read token)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from mta.errors import one_line
from mta.registry.service import check_schema

from .auth_deps import ReadAuth
from .metrics import CONTENT_TYPE
from .schemas import HealthResponse, error_responses
from .state import AppState


def ops_router(state: AppState) -> APIRouter:
    """`/healthz` (no auth: load balancers probe it) and `/metrics` over `state`."""
    router = APIRouter()
    context = state.ctx

    @router.get(
        "/healthz",
        tags=["ops"],
        response_class=Response,
        responses={200: {"model": HealthResponse}, 503: {"model": HealthResponse}},
    )
    def healthz() -> Response:
        """Liveness: the database answers with the current schema and the store is reachable."""
        checks = {"database": "ok", "store": "ok"}
        try:
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

    @router.get(
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

    return router
