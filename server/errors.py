"""Map the exceptions the layers raise on purpose to HTTP statuses and one JSON error shape.

Every error response is ``{"error": {"code": "...", "message": "..."}}``. Bad input
never yields a 500: it is a 4xx with a message that says what to fix. The 5xx
statuses are kept for faults on the server's side:

* ``integrity_error`` → **500**. The registry and the blob store disagree (a blob
  failing its digest, a row without its blob). Retrying will not help, so it is not
  a 503; an operator must run ``mta fsck``. The one exception: a blob missing because
  the request's user was deleted while it ran is that user's **404**.
* ``storage_unavailable`` / ``registry_unavailable`` / ``not_initialized`` → **503**.
  Any other storage or database failure (S3 or PostgreSQL unreachable, no schema
  yet): the server cannot answer now, a retry after the operator's fix may succeed.
* ``internal_error`` → **500**. A bug; the traceback goes to the server log only.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mta.errors import one_line

log = logging.getLogger("mta.server")


class ApiError(Exception):
    """An error the HTTP layer raises itself (auth, a full job queue, a busy user)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class ErrorMapping:
    """How one exception type becomes an HTTP error."""

    exc_type: type[BaseException]
    status: int
    code: str


def error_mappings() -> list[ErrorMapping]:
    """Exception types and their HTTP errors, subclass-first (the first match wins)."""
    from mta.errors import MtaError, UnknownNameError
    from mta.registry.errors import (
        AlreadyExistsError,
        ImmutableError,
        IntegrityError,
        InvalidInputError,
        NotFoundError,
        NotInitializedError,
        RegistryError,
    )
    from mta.storage.errors import BlobCorruptedError, BlobNotFoundError, StorageError

    return [
        # Integrity first: BlobCorruptedError is also a StorageError. A missing blob is an
        # integrity fault here, unlike in the CLI: HTTP clients never name digests.
        ErrorMapping(BlobCorruptedError, 500, "integrity_error"),
        ErrorMapping(BlobNotFoundError, 500, "integrity_error"),
        ErrorMapping(IntegrityError, 500, "integrity_error"),
        ErrorMapping(StorageError, 503, "storage_unavailable"),
        ErrorMapping(NotInitializedError, 503, "not_initialized"),
        ErrorMapping(NotFoundError, 404, "not_found"),
        ErrorMapping(AlreadyExistsError, 409, "already_exists"),
        ErrorMapping(ImmutableError, 409, "immutable"),
        ErrorMapping(InvalidInputError, 422, "invalid_input"),
        ErrorMapping(UnknownNameError, 422, "invalid_input"),
        # What remains of RegistryError is the database failing (session_scope's mapping).
        ErrorMapping(RegistryError, 503, "registry_unavailable"),
        ErrorMapping(MtaError, 422, "invalid_input"),
        ErrorMapping(ValueError, 422, "invalid_input"),
    ]


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON body of every error response."""
    return {"error": {"code": code, "message": message}}


def _json_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: ``body.top_k: must be >= 1; ...``."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", ""))
    return "; ".join(parts) or "invalid request"


def _describe_unparsable(exc: StarletteHTTPException) -> str:
    """Why a body that is not JSON text failed to parse, as one line.

    FastAPI answers 400 to a body whose parse fails with anything but a JSONDecodeError,
    keeping the cause: a RecursionError (nested too deeply), a UnicodeDecodeError (not
    UTF-8), a ValueError (an integer of more digits than Python converts).
    """
    cause = exc.__cause__
    if isinstance(cause, RecursionError):
        return "body: invalid JSON: nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return f"body: invalid JSON: not UTF-8 ({one_line(cause)})"
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        return f"body: invalid JSON: an integer over {sys.get_int_max_str_digits()} digits"
    if cause is not None:
        return f"body: invalid JSON: {one_line(cause)}"
    return f"body: invalid JSON: {exc.detail}"


_STATUS_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


async def _deleted_user(request: Request) -> str | None:
    """The request's user id when that user no longer exists (deleted mid-request), else None."""
    from starlette.concurrency import run_in_threadpool

    from mta.registry.errors import NotFoundError
    from mta.registry.service import get_user

    user_id = request.path_params.get("user_id")
    state = getattr(request.app.state, "mta", None)
    if not isinstance(user_id, str) or state is None:
        return None
    try:
        await run_in_threadpool(get_user, state.ctx, user_id)
    except NotFoundError:
        return user_id
    except Exception:  # noqa: BLE001 - the original integrity error is the answer then
        return None
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Make every error the app returns use the ``{"error": {code, message}}`` shape."""
    from mta.storage.errors import BlobNotFoundError

    mappings = error_mappings()

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _json_error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _json_error(422, "validation_error", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # Only FastAPI's body parse raises a 400 here; a body that is not JSON is a 422
            # like any other, as the error table documents.
            return _json_error(422, "validation_error", _describe_unparsable(exc))
        code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return _json_error(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    async def _domain(request: Request, exc: Exception) -> JSONResponse:
        mapping = next(m for m in mappings if isinstance(exc, m.exc_type))
        if isinstance(exc, BlobNotFoundError):
            gone = await _deleted_user(request)
            if gone is not None:
                return _json_error(404, "not_found", f"no user {gone!r}; it was deleted")
        if mapping.status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, one_line(exc))
        return _json_error(mapping.status, mapping.code, one_line(exc))

    # Registered per class, so Starlette's exception middleware answers them like any
    # response; a catch-all `Exception` handler would run outside the app and re-raise.
    for mapping in mappings:
        app.add_exception_handler(mapping.exc_type, _domain)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json_error(500, "internal_error", "internal server error (see the server log)")
