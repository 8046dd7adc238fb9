"""`GET /v1/users/{user_id}/adapter` (a PEFT adapter as a tar archive, with ETag/304) and
`GET /v1/users/{user_id}/adapter-name` (the versioned name engines load it under)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response

from .adapter_fetch import adapter_name_info, adapter_response
from .archive import ADAPTER_NAME_HEADER, ARCHIVE_MEDIA_TYPE, DIGEST_HEADER, VERSION_CHARS
from .auth_deps import ReadAuth
from .routes_params import V1, UserId
from .schemas import AdapterNameResponse, error_responses
from .state import app_state

MaxRank = Annotated[
    int | None,
    Query(ge=1, le=4096, description="Compress the export to this rank (truncated SVD)."),
]
Dtype = Annotated[
    Literal["fp32", "fp16", "bf16"], Query(description="Tensor precision of the files.")
]
Version = Annotated[
    str | None,
    Query(
        pattern=f"^[0-9a-f]{{{VERSION_CHARS}}}$",
        description="The version of the adapter name (<user_id>~<version>); when it is not "
        "the user's current version the answer is 410, never other bytes.",
    ),
]
_NAME_HEADER = {ADAPTER_NAME_HEADER: {"schema": {"type": "string"}}}


def adapter_router() -> APIRouter:
    """The adapter routes (read token); the work is in `adapter_fetch.py`."""
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
                "headers": {
                    "ETag": {"schema": {"type": "string"}},
                    DIGEST_HEADER: {"schema": {"type": "string"}},
                    **_NAME_HEADER,
                },
            },
            304: {
                "description": "Not modified: the If-None-Match ETag is current.",
                "headers": _NAME_HEADER,
            },
            **error_responses(401, 403, 404, 410, 422, 500, 503),
        },
    )
    async def get_adapter(
        request: Request,
        user_id: UserId,
        max_rank: MaxRank = None,
        dtype: Dtype = "fp32",
        version: Version = None,
        if_none_match: Annotated[str | None, Header(max_length=4096)] = None,
    ) -> Response:
        """The user's adapter (fused + stack) as a PEFT folder in a tar archive."""
        state = app_state(request)
        return await adapter_response(state, user_id, max_rank, dtype, if_none_match, version)

    @router.get(
        "/users/{user_id}/adapter-name",
        tags=["users"],
        dependencies=[ReadAuth],
        responses=error_responses(401, 403, 404, 422, 500, 503),
    )
    async def get_adapter_name(
        request: Request, user_id: UserId, max_rank: MaxRank = None, dtype: Dtype = "fp32"
    ) -> AdapterNameResponse:
        """The name an engine loads the user's current adapter under (<user_id>~<version>).

        Builds the archive if no fetch has yet (as a fetch would), so `rank`, `bytes` and
        `etag` describe exactly what the adapter route then serves with these options.
        """
        return await adapter_name_info(app_state(request), user_id, max_rank, dtype)

    return router
