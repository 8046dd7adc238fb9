"""`POST /v1/jobs/adapt`: adapt many users in one background job, with the CLI's bulk runner.

The selection is resolved when the job is submitted (so a bad one is a 422, an unknown user
it names a 404, and the job knows its total); the job then fuses if needed, trains and
commits user by user, reports `progress` as users done / total, and finishes with the same
summary as `mta user adapt --json`. One bulk job at a time: its record uses the user id "*",
so the runner's one-job-per-user rule answers 409 to a second one while the first is queued
or running. Each user is claimed while the job works on it (`WorkSpec.run`), so a CLI or
Ray job, or another server, working on the same users meanwhile leaves them alone:
whichever job comes second reports them `busy` (the summary's `busy` list; not a failure).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from mta.progress import ProgressFn
from mta.registry.context import RegistryContext
from mta.registry.errors import NotFoundError
from mta.registry.service import UserOutcome, WorkSpec, list_users, run_local, select_users

from .schemas import BulkAdaptBody, JobResponse, error_responses

BULK_USER = "*"
BULK_KIND = "bulk_adapt"
SHOWN_UNKNOWN = 5  # unknown ids a 404 names


def check_users_exist(ctx: RegistryContext, user_ids: list[str]) -> None:
    """Refuse a selection that names users the registry does not hold, as one-user routes do.

    Raises:
        NotFoundError: naming the first unknown ids and how many there are.
    """
    if not user_ids:
        return
    known = {user.user_id for user in list_users(ctx)}
    unknown = list(dict.fromkeys(u for u in user_ids if u not in known))
    if not unknown:
        return
    shown = ", ".join(repr(u) for u in unknown[:SHOWN_UNKNOWN])
    more = f" and {len(unknown) - SHOWN_UNKNOWN} more" if len(unknown) > SHOWN_UNKNOWN else ""
    noun = "user" if len(unknown) == 1 else "users"
    raise NotFoundError(f"no {noun} {shown}{more}; nothing was queued")


def bulk_router(admin_auth: Any) -> APIRouter:
    """The bulk routes, guarded by `admin_auth` (the app's admin-token dependency)."""
    router = APIRouter()

    @router.post(
        "/jobs/adapt",
        tags=["jobs"],
        status_code=202,
        dependencies=[admin_auth],
        responses=error_responses(401, 403, 404, 409, 413, 422, 429, 503),
    )
    def adapt_users(request: Request, response: Response, body: BulkAdaptBody) -> JobResponse:
        """Queue the training of many users' stacks; poll the returned job for progress."""
        state = request.app.state.mta
        ctx = state.ctx
        check_users_exist(ctx, body.user_ids)  # a 404 now, not a failed user in the summary
        user_ids = select_users(
            ctx,
            ids=body.user_ids,
            all_users=body.all,
            stale=body.stale,
            missing=body.missing,
            task=body.bank,
        )
        spec = WorkSpec.adapt_users(
            body.to_request(), force=body.force, refresh=body.stale, batch_users=body.batch_users
        )
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
