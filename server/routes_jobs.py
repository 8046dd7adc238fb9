"""`POST /v1/users/{user_id}/adapt` (queue one user's training) and `GET /v1/jobs/{job_id}`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from mta.progress import ProgressFn
from mta.registry import service

from .auth_deps import AdminAuth, ReadAuth
from .errors import ApiError
from .jobs import Job
from .routes_params import V1, UserId
from .schemas import AdaptBody, JobResponse, error_responses
from .state import app_state


def job_response(job: Job) -> JobResponse:
    """A job as its API schema."""
    return JobResponse.model_validate(job, from_attributes=True)


def jobs_router() -> APIRouter:
    """The single-user adapt route (admin token) and the job poll (read token)."""
    router = APIRouter(prefix=V1)

    @router.post(
        "/users/{user_id}/adapt",
        tags=["jobs"],
        status_code=202,
        dependencies=[AdminAuth],
        responses=error_responses(401, 403, 404, 409, 413, 422, 429, 503),
    )
    def adapt_user(
        request: Request, response: Response, user_id: UserId, body: AdaptBody
    ) -> JobResponse:
        """Queue the training of the user's stack; poll the returned job."""
        state = app_state(request)
        service.get_user(state.ctx, user_id)  # a 404 now, not a failed job later
        params = body.model_dump()
        adapt = body.to_request().validate()

        def run(progress: ProgressFn) -> dict[str, Any]:
            stack = service.adapt_user(state.ctx, user_id, adapt, progress=progress)
            return stack.to_dict()

        job = state.jobs.submit("adapt", user_id, params, run)
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return job_response(job)

    @router.get(
        "/jobs/{job_id}",
        tags=["jobs"],
        dependencies=[ReadAuth],
        # No job id fails validation now, but without a declared 422 FastAPI would add its
        # own, whose body is not the ErrorResponse every error here has.
        responses=error_responses(401, 403, 404, 422),
    )
    def get_job(request: Request, job_id: str) -> JobResponse:
        """A job's status, and its result or error once finished."""
        # Any string is a job id: one that is not 32 hex digits is one no job has (404).
        job = app_state(request).jobs.get(job_id)
        if job is None:
            shown = job_id if len(job_id) <= 64 else f"{job_id[:64]}..."
            raise ApiError(404, "not_found", f"no job {shown!r} (jobs live in memory only)")
        return job_response(job)

    return router
