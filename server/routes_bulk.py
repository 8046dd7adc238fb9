"""`POST /v1/jobs/adapt`: adapt many users in one background job, with the CLI's bulk runner.

The selection is resolved when the job is submitted (so a bad one is a 422 and the job
knows its total); the job then fuses if needed, trains and commits user by user, reports
`progress` as users done / total, and finishes with the same summary as `mta user adapt
--json`. One bulk job at a time: its record uses the user id "*", so the runner's
one-job-per-user rule answers 409 to a second one while the first is queued or running.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from mta.progress import ProgressFn
from mta.registry.service import UserOutcome, WorkSpec, run_local, select_users

from .schemas import BulkAdaptBody, JobResponse, error_responses

BULK_USER = "*"
BULK_KIND = "bulk_adapt"


def bulk_router(admin_auth: Any) -> APIRouter:
    """The bulk routes, guarded by `admin_auth` (the app's admin-token dependency)."""
    router = APIRouter()

    @router.post(
        "/jobs/adapt",
        tags=["jobs"],
        status_code=202,
        dependencies=[admin_auth],
        responses=error_responses(400, 401, 403, 409, 413, 422, 429, 503),
    )
    def adapt_users(request: Request, response: Response, body: BulkAdaptBody) -> JobResponse:
        """Queue the training of many users' stacks; poll the returned job for progress."""
        state = request.app.state.mta
        ctx = state.ctx
        user_ids = select_users(
            ctx,
            ids=body.user_ids,
            all_users=body.all,
            stale=body.stale,
            missing=body.missing,
            task=body.bank,
        )
        spec = WorkSpec.adapt_users(body.to_request(), force=body.force, refresh=body.stale)
        params = {**body.model_dump(exclude={"user_ids"}), "users": len(user_ids)}

        def run(progress: ProgressFn) -> dict[str, Any]:
            outcomes: list[UserOutcome] = []

            def on_outcome(outcome: UserOutcome, done: int, total: int) -> None:
                outcomes.append(outcome)
                progress("adapt", done, total)

            progress("adapt", 0, len(user_ids))
            summary = run_local(ctx, user_ids, spec, on_outcome=on_outcome)
            return {**summary.to_dict(), "users": [o.to_dict() for o in outcomes]}

        job = state.jobs.submit(BULK_KIND, BULK_USER, params, run)
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return JobResponse.model_validate(job, from_attributes=True)

    return router
