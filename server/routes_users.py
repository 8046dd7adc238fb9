"""`/v1/users`: list, register, show, delete and fuse users.

A user's adapter download is in `routes_adapter.py`, the training of their stack
(`POST /v1/users/{user_id}/adapt`) in `routes_jobs.py`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from mta.registry import service
from mta.registry.entities import DeleteResult, Recipe, User, UserDetail

from .auth_deps import AdminAuth, ReadAuth
from .routes_params import V1, UserId, checked_bank_ref
from .schemas import TASK_REGEX, AddUserRequest, FuseBody, error_responses
from .state import app_state


# long: a route table (five user routes with their OpenAPI declarations), read top to bottom
def users_router() -> APIRouter:
    """The user routes: GETs need a read token, the others an admin token."""
    router = APIRouter(prefix=V1)

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
        responses=error_responses(401, 403, 404, 409, 413, 422, 503),
    )
    def add_user(request: Request, body: AddUserRequest) -> User:
        """Register a user: embed their profile and pin their task's bank version."""
        return service.add_user(
            app_state(request).ctx,
            user_id=body.user_id,
            task=body.task,
            profile=body.profile,
            bank_ref=checked_bank_ref(body.bank_ref),
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
        responses=error_responses(401, 403, 404, 413, 422, 503),
    )
    def fuse_user(request: Request, user_id: UserId, body: FuseBody | None = None) -> Recipe:
        """Retrieve the user's nearest anchors and store the fusion recipe."""
        body = body or FuseBody()
        checked_bank_ref(body.bank_ref)
        return service.fuse_user(app_state(request).ctx, user_id, body.to_request())

    return router
