"""Bound the request headers: 431 with the JSON error body instead of a reset connection.

uvicorn (h11) refuses a request head larger than its buffer with a plain-text 400 and closes
the socket while the client is still sending, which reaches the client as a connection reset
and no response at all. `mta serve` therefore gives uvicorn a buffer of PROTOCOL_HEAD_BYTES
(see `listener.py`), far over this bound, so an oversized header (a 200 KB ``Authorization``)
reaches the app and is answered here, before auth and before any route runs.
"""

from __future__ import annotations

from typing import Any

from .errors import error_body


class HeaderLimitMiddleware:
    """Answer 431 when the request's header names and values exceed `max_bytes` bytes."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Pass the request on, or answer 431 naming the largest header."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or ()
        total = sum(len(name) + len(value) for name, value in headers)
        if total <= self.max_bytes:
            await self.app(scope, receive, send)
            return
        from fastapi.responses import JSONResponse

        largest = max(headers, key=lambda h: len(h[1]))[0].decode("latin-1")
        message = (
            f"request headers are {total} bytes, over the {self.max_bytes}-byte bound "
            f"(largest: {largest})"
        )
        body = error_body("headers_too_large", message)
        await JSONResponse(body, status_code=431)(scope, receive, send)
