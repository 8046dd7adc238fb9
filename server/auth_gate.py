"""Answer 401 to an anonymous request that no route matches, before the router redirects it.

Each route checks its own role (read or admin) as a dependency, and dependencies run only
once a route has matched. For a path that matches none, Starlette's router answers 307 to
the same path with its trailing slash toggled when that one exists (``/v1/users/..%2f``
becomes ``/v1/users/..``), so a caller without a token learned which paths exist. This
gate answers such requests 401 first; matched routes keep their own check, and with it
their route label in the metrics.
"""

from __future__ import annotations

from typing import Any

from starlette.routing import Match

from .auth import Role, TokenSet, authorize
from .errors import ApiError, error_body


def _authorization(scope: dict[str, Any]) -> str | None:
    """The Authorization header of a request, or None."""
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            return value.decode("latin-1")
    return None


class AuthGateMiddleware:
    """401 for requests without a valid token on paths no route of `router` matches."""

    def __init__(self, app: Any, tokens: TokenSet | None, router: Any) -> None:
        self.app = app
        self.tokens = tokens
        self.router = router

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Pass the request on, or answer 401 with the usual JSON error."""
        if scope["type"] != "http" or self.tokens is None:
            await self.app(scope, receive, send)
            return
        try:
            # Any valid token passes: the route (or the router's 404/307) takes it from here.
            authorize(_authorization(scope), self.tokens, Role.READ)
        except ApiError as error:
            if not self._matches_a_route(scope):
                from fastapi.responses import JSONResponse

                response = JSONResponse(
                    error_body(error.code, error.message), error.status, error.headers
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _matches_a_route(self, scope: dict[str, Any]) -> bool:
        """Whether some route takes this path (any method: a wrong one is the route's 405)."""
        return any(route.matches(scope)[0] is not Match.NONE for route in self.router.routes)
