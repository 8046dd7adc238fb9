"""A bulk job's users trained B at a time: claimed, checked, prepared, trained in joint
passes (`mta.batched_training`), committed one by one.

Each user keeps the single-user rules: claimed for the job first (`busy` if another job
holds them), re-fused onto the latest bank with `refresh`, skipped when their current
stack already matches the request (unless `force`); a user whose preparation or commit
fails is `failed` alone. A failure of the joint training fails the users trained in it.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

from mta.errors import one_line
from mta.registry.banks.versions import latest_version
from mta.registry.context import RegistryContext
from mta.registry.jobs.claims import Claimant, claimed
from mta.registry.jobs.outcomes import ADAPTED, BUSY, FAILED, SKIPPED, UserOutcome
from mta.registry.requests import AdaptRequest, FuseRequest
from mta.registry.users.adapt import PreparedAdapt, commit_adapt, prepare_adapt, train_together
from mta.registry.users.records import fuse_user, get_user


def newer_bank(ctx: RegistryContext, detail: Any) -> int | None:
    """The task's latest bank version when the user's recipe is on an older one, else None."""
    if detail.recipe is None:
        return None
    with ctx.read_session() as session:
        latest = latest_version(session, detail.task)
    return latest if detail.recipe.bank_version < latest else None


def skip_reason(
    ctx: RegistryContext, user_id: str, request: AdaptRequest, *, force: bool, refresh: bool
) -> str | None:
    """Why the user needs no training ("current stack matches"), else None.

    With `refresh` (what `--stale` asks for) a user whose recipe is on an older bank
    version is first re-fused onto the latest, which leaves them without a current stack.
    """
    detail = get_user(ctx, user_id)
    latest = newer_bank(ctx, detail) if refresh else None
    if latest is not None:
        fuse_user(ctx, user_id, FuseRequest(bank_ref=str(latest)))
        detail = get_user(ctx, user_id)
    if not force and detail.stack is not None and request.matches(detail.stack):
        return "current stack matches"
    return None


def adapt_group(
    ctx: RegistryContext,
    user_ids: list[str],
    request: AdaptRequest,
    *,
    force: bool,
    refresh: bool,
    job: str,
) -> list[UserOutcome]:
    """Adapt `user_ids` in joint passes; one outcome per user, in order."""
    claimant = Claimant(job, "adapt")
    outcomes: dict[str, UserOutcome] = {}
    with ExitStack() as claims:
        ready: list[tuple[PreparedAdapt, float, float]] = []  # (prepared, start, fuse s)
        for user_id in user_ids:
            start = time.perf_counter()
            try:
                holder = claims.enter_context(claimed(ctx, user_id, claimant))
                if holder is not None:
                    outcomes[user_id] = UserOutcome(user_id, BUSY, _since(start), holder.describe())
                    continue
                reason = skip_reason(ctx, user_id, request, force=force, refresh=refresh)
                if reason is not None:
                    outcomes[user_id] = UserOutcome(user_id, SKIPPED, _since(start), reason)
                    continue
                ready.append((prepare_adapt(ctx, user_id, request), start, _since(start)))
            except Exception as error:  # noqa: BLE001 - one user's failure must not stop the job
                outcomes[user_id] = UserOutcome(user_id, FAILED, _since(start), one_line(error))
        outcomes.update(_train_and_commit(ctx, ready))
    return [outcomes[user_id] for user_id in user_ids]


def _train_and_commit(
    ctx: RegistryContext, ready: list[tuple[PreparedAdapt, float, float]]
) -> dict[str, UserOutcome]:
    """Train the prepared users together, then commit each; their outcomes by user id."""
    if not ready:
        return {}
    t0 = time.perf_counter()
    try:
        results = train_together(ctx, [prepared for prepared, _, _ in ready])
    except Exception as error:  # noqa: BLE001 - the users of this pass fail, the job goes on
        reason = one_line(error)
        return {p.user_id: UserOutcome(p.user_id, FAILED, _since(s), reason) for p, s, _ in ready}
    train_each = (time.perf_counter() - t0) / len(ready)  # the pass's time, shared evenly
    done = {}
    for (prepared, start, fuse_s), (stack, losses) in zip(ready, results, strict=True):
        user_id, t1 = prepared.user_id, time.perf_counter()
        try:
            entity = commit_adapt(ctx, prepared, stack, losses)
        except Exception as error:  # noqa: BLE001 - one user's failure must not stop the job
            done[user_id] = UserOutcome(user_id, FAILED, _since(start), one_line(error))
            continue
        phases = {"fuse": fuse_s, "train": train_each, "commit": time.perf_counter() - t1}
        done[user_id] = UserOutcome(
            user_id, ADAPTED, _since(start), stack_id=entity.stack_id, phases=phases
        )
    return done


def _since(start: float) -> float:
    """Seconds since `start` (a perf_counter reading)."""
    return time.perf_counter() - start
