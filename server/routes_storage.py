"""`GET /v1/storage/report`: bytes stored by kind and per user."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from mta.registry import service

from .auth_deps import ReadAuth
from .routes_params import V1
from .schemas import error_responses
from .state import app_state


def storage_router() -> APIRouter:
    """The storage report route (read token)."""
    router = APIRouter(prefix=V1)

    @router.get(
        "/storage/report",
        tags=["storage"],
        dependencies=[ReadAuth],
        responses=error_responses(401, 403, 503),
    )
    def storage_report(request: Request) -> dict[str, Any]:
        """Bytes by kind, per user, and versus one LoRA per user."""
        return service.storage_report(app_state(request).ctx)

    return router
