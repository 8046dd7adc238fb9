"""The routes' auth dependencies: `ReadAuth` (GET routes) and `AdminAuth` (every route)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .auth import Role, authorize

_bearer = HTTPBearer(
    auto_error=False,
    description="A read token (GET routes) or an admin token (every route).",
)


# The check does no I/O, so it is `async def`: FastAPI runs a sync dependency on the
# threadpool, a thread hop per dependency per request that costs more than the check itself.
def _require(role: Role) -> Callable[..., Awaitable[None]]:
    async def check(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> None:
        authorize(request.headers.get("authorization"), request.app.state.tokens, role)

    return check


ReadAuth = Depends(_require(Role.READ))
AdminAuth = Depends(_require(Role.ADMIN))
