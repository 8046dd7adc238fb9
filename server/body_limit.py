"""Bound request bodies by the bytes actually received, chunked uploads included.

A Content-Length over the bound is refused before anything is read. A body without one
(``Transfer-Encoding: chunked``) or one that runs past its declared length is counted
as it arrives and refused as soon as the count passes the bound, so an oversized upload
is never parsed, embedded or stored.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException

from .errors import error_body


class BodyTooLargeError(HTTPException):
    """Raised from `receive` when a body passes the bound; the app's handlers answer 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body over {max_bytes} bytes")


def _declared_length(scope: dict[str, Any]) -> bytes | None:
    """The raw Content-Length header value, or None."""
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            return value
    return None


class BodyLimitMiddleware:
    """Answer 413 when a request body exceeds `max_bytes` bytes."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Pass the request on with a counting `receive`, or answer 413."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError:
            # FastAPI's handlers normally answer it; this covers a body read outside them.
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from fastapi.responses import JSONResponse

        body = error_body("payload_too_large", f"request body over {self.max_bytes} bytes")
        await JSONResponse(body, status_code=413)(scope, receive, send)
