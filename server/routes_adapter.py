"""`GET /v1/users/{user_id}/adapter`: a user's PEFT adapter as a tar archive, with ETag/304."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response

from .adapter_fetch import adapter_response
from .archive import ARCHIVE_MEDIA_TYPE
from .auth_deps import ReadAuth
from .routes_params import V1, UserId
from .schemas import error_responses
from .state import app_state


def adapter_router() -> APIRouter:
    """The adapter download route (read token); the work is in `adapter_fetch.py`."""
    router = APIRouter(prefix=V1)

    @router.get(
        "/users/{user_id}/adapter",
        tags=["users"],
        dependencies=[ReadAuth],
        response_class=Response,
        responses={
            200: {
                "description": "The PEFT adapter as a tar archive "
                "(adapter_config.json + adapter_model.safetensors).",
                "content": {ARCHIVE_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
                "headers": {"ETag": {"schema": {"type": "string"}}},
            },
            304: {"description": "Not modified: the If-None-Match ETag is current."},
            **error_responses(401, 403, 404, 422, 500, 503),
        },
    )
    async def get_adapter(
        request: Request,
        user_id: UserId,
        max_rank: Annotated[
            int | None,
            Query(ge=1, le=4096, description="Compress the export to this rank (truncated SVD)."),
        ] = None,
        dtype: Annotated[
            Literal["fp32", "fp16", "bf16"], Query(description="Tensor precision of the files.")
        ] = "fp32",
        if_none_match: Annotated[str | None, Header(max_length=4096)] = None,
    ) -> Response:
        """The user's adapter (fused + stack) as a PEFT folder in a tar archive."""
        state = app_state(request)
        return await adapter_response(state, user_id, max_rank, dtype, if_none_match)

    return router
