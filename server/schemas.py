"""Request and response bodies of the HTTP API (pydantic models).

Responses that are registry entities use the frozen dataclasses of
``mta.registry.entities`` directly as FastAPI response models, so the OpenAPI
schema follows the service layer without a second copy of every field.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mta.registry.service import USER_ID_PATTERN, AdaptRequest, FuseRequest
from mta.stack_formats import DEFAULT_STACK_FORMAT

# The service's own rule (registry/names.py), anchored for OpenAPI; "." and ".." pass the
# pattern and are refused by the service with a 422.
USER_ID_REGEX = f"^{USER_ID_PATTERN.pattern}$"
TASK_REGEX = r"^[a-z][a-z0-9_]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    """What went wrong: a stable machine code and a one-line message."""

    code: str = Field(examples=["not_found"])
    message: str = Field(examples=["no user 'u42'"])


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class AddUserRequest(_Strict):
    """Register a user under a task's bank."""

    user_id: str = Field(pattern=USER_ID_REGEX, examples=["user42"])
    task: str = Field(pattern=TASK_REGEX, examples=["movie_tagging"])
    profile: dict[str, Any] | list[dict[str, Any]] = Field(
        description="The per-user record {profile: [...], query: [...]} (its user_id is "
        "replaced by this one) or a bare list of history items, in the task's LaMP format.",
        examples=[[{"id": "1", "description": "a heist goes wrong", "tag": "crime"}]],
    )
    bank_ref: str | None = Field(
        default=None,
        max_length=64,
        description="Bank version number or alias to pin (default: the prod alias, else latest).",
    )


class FuseBody(_Strict):
    """Retrieve the nearest anchors and store the user's fusion recipe."""

    top_k: int = Field(default=2, ge=1, le=64)
    method: str = Field(default="cat", description="Fusion method: cat (exact), svd, factorwise.")
    weight_rule: str = Field(default="proportional", description="proportional or softmax.")
    temperature: float = Field(default=1.0, gt=0, le=1000)
    rank: int | None = Field(default=None, ge=1, le=4096, description="Target rank for svd.")
    bank_ref: str | None = Field(
        default=None,
        max_length=64,
        description="Fuse against this version/alias of the task's bank (default: pinned).",
    )

    def to_request(self) -> FuseRequest:
        """The service's fuse request with these values."""
        return FuseRequest(**self.model_dump())


class AdaptBody(_Strict):
    """Train the user's low-rank stack on ``shots`` profile items (a sample seeded by ``seed``)."""

    shots: int = Field(ge=1, le=10_000, examples=[5])
    rank: int = Field(default=1, ge=1, le=64)
    epochs: int = Field(default=3, ge=1, le=100)
    lr: float = Field(default=1e-3, gt=0, le=1)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    dtype: Literal["fp16", "bf16", "fp32", "int8", "nf4"] = Field(
        default=DEFAULT_STACK_FORMAT,
        description="Stored format of the stack (int8/nf4: quantized; served dequantized).",
    )
    batch_size: int = Field(default=4, ge=1, le=256)
    max_steps: int | None = Field(default=None, ge=1, le=100_000)
    modules: str = Field(
        default="all",
        max_length=256,
        description="Modules the stack trains: all, attention, mlp, or a comma-separated list.",
    )

    def to_request(self) -> AdaptRequest:
        """The service's training request with these values (the selection fields left out)."""
        names = {f.name for f in dataclasses.fields(AdaptRequest)}
        return AdaptRequest(**self.model_dump(include=names))


class BulkAdaptBody(AdaptBody):
    """Adapt many users in one job: a selection, and the training every one of them gets.

    The selection is the union of ``user_ids`` and the users each flag picks, optionally
    limited to the task ``bank``; users whose current stack already matches are skipped
    unless ``force``.
    """

    user_ids: list[Annotated[str, Field(pattern=USER_ID_REGEX)]] = Field(
        default_factory=list, max_length=100_000, examples=[["alice", "bob"]]
    )
    all: bool = Field(default=False, description="Every user.")
    stale: bool = Field(
        default=False,
        description="Users whose current stack is on an older bank version (re-fused first).",
    )
    missing: bool = Field(default=False, description="Users without a current stack.")
    bank: str | None = Field(default=None, pattern=TASK_REGEX, description="Only this task.")
    force: bool = Field(default=False, description="Retrain users whose stack already matches.")
    batch_users: int = Field(
        default=1, ge=1, le=4096, description="Users trained per forward/backward pass."
    )


JobStatus = Literal["queued", "running", "succeeded", "failed"]


class JobProgress(BaseModel):
    """The last progress report of a running job."""

    stage: str
    done: int
    total: int


class JobResponse(BaseModel):
    """A background job (stack training) and, once finished, its result or error."""

    id: str
    kind: str
    user_id: str = Field(description='The user, or "*" for a bulk job.')
    status: JobStatus
    params: dict[str, Any]
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: JobProgress | None = None
    result: dict[str, Any] | None = Field(
        default=None,
        description="On success: the stack (adapt), or the summary with per-user outcomes "
        "(bulk_adapt; users that failed are listed there, the job itself succeeds).",
    )
    error: ErrorDetail | None = None


class AdapterNameResponse(BaseModel):
    """The name an engine loads a user's current adapter under, and what a fetch returns."""

    user_id: str
    name: str = Field(
        description="<user_id>~<version>: changes whenever the adapter changes.",
        examples=["alice~3f2a9c01b7de"],
    )
    version: str = Field(
        description="12 hex of the adapter identity's digest (default export options); the "
        "adapter route's ?version= takes it.",
        examples=["3f2a9c01b7de"],
    )
    etag: str = Field(description="The ETag a fetch with the same max_rank and dtype returns.")
    rank: int = Field(description="Largest module rank of the archive (vLLM --max-lora-rank).")
    dtype: Literal["fp32", "fp16", "bf16"]
    max_rank: int | None
    bytes: int = Field(description="Size of the archive.")
    sha256: str = Field(description="sha256 hex of the archive (its Repr-Digest header).")
    base_model: str = Field(description="The bank's base model, as the registry records it.")


class HealthResponse(BaseModel):
    """Liveness and dependencies."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str]


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error statuses, all with the ErrorResponse body."""
    descriptions = {
        401: "Missing or invalid bearer token",
        403: "Read token used on a write route",
        404: "Not found",
        409: "Conflict (already exists, or a job already running)",
        410: "The requested adapter version is no longer the user's current one",
        413: "Request body too large",
        422: "Invalid input",
        429: "Job queue full",
        500: "Integrity error (registry and store disagree) or a bug",
        503: "Database or store unavailable",
    }
    return {s: {"model": ErrorResponse, "description": descriptions[s]} for s in statuses}
