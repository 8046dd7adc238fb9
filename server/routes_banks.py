"""`GET /v1/banks` and `GET /v1/banks/{task}`: the published bank versions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from mta.registry import service
from mta.registry.entities import BankDetail, BankVersion

from .auth_deps import ReadAuth
from .routes_params import V1, BankRef, Task
from .schemas import TASK_REGEX, error_responses
from .state import app_state


def banks_router() -> APIRouter:
    """The bank routes (read token)."""
    router = APIRouter(prefix=V1)

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
    def get_bank(request: Request, task: Task, ref: BankRef = None) -> BankDetail:
        """One bank version with its anchors."""
        return service.get_bank(app_state(request).ctx, task, ref)

    return router
