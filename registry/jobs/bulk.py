"""Bulk personalization: select users, then fuse or adapt each one, committing user by user.

One process loads the base model and each bank's anchors once (`RegistryContext` caches
them) and goes through the users; each user is fused if needed, trained and committed on
its own (blob first, then its row), so an interruption loses at most the user in flight
and a re-run skips every user whose current stack already matches the request. A user
that fails is reported with a one-line reason and the job goes on. The same per-user
functions run inside Ray actors (`ray_runner.py`) and HTTP bulk jobs.

Each user is claimed for the job before its state is read (`claims.py`) and released when
done, so two jobs over the same users work each user once: the other job reports it
`busy` (while claimed) or `skipped` (once committed). A busy user is not a failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from mta.errors import one_line
from mta.registry.context import RegistryContext
from mta.registry.errors import InvalidInputError
from mta.registry.jobs.batched import adapt_group, newer_bank, skip_reason
from mta.registry.jobs.claims import Claimant, claimed, new_job_id
from mta.registry.jobs.outcomes import (
    ADAPTED,
    BUSY,
    FAILED,
    FUSED,
    SKIPPED,
    BulkSummary,
    UserOutcome,
    summarize,
)
from mta.registry.models import SqlBank, SqlUser
from mta.registry.requests import AdaptRequest, FuseRequest
from mta.registry.users.adapt import adapt_user
from mta.registry.users.records import fuse_user, get_user


def read_id_file(path: Path) -> list[str]:
    """User ids from a file, one per line (blank lines and `#` comments skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"{path}: not UTF-8 text ({error.reason})") from None
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def select_users(
    ctx: RegistryContext,
    *,
    ids: Iterable[str] = (),
    all_users: bool = False,
    stale: bool = False,
    missing: bool = False,
    task: str | None = None,
) -> list[str]:
    """The selected user ids: the given ones, then every user matching a flag, no repeats.

    Args:
        ids: explicit ids (e.g. arguments and `--from` lines), kept in their order.
        all_users: every registered user.
        stale: users whose current stack was trained on an older bank version than their
            task's latest.
        missing: users without a current stack (no recipe yet, or re-fused since).
        task: keep only users of this task (`--bank TASK`).

    Raises:
        InvalidInputError: nothing to select by.
    """
    explicit = list(dict.fromkeys(ids))
    if not (explicit or all_users or stale or missing):
        raise InvalidInputError("select users: give IDs, --from FILE, --all, --stale or --missing")
    chosen = dict.fromkeys(explicit)
    if all_users or stale or missing:
        for user_id, state in _stack_states(ctx, task).items():
            if all_users or (stale and state == "stale") or (missing and state == "missing"):
                chosen.setdefault(user_id)
    if task is not None and explicit:
        tasks = _tasks_of(ctx, explicit)
        chosen = {u: None for u in chosen if tasks.get(u, task) == task}
    return list(chosen)


def _tasks_of(ctx: RegistryContext, user_ids: list[str]) -> dict[str, str]:
    """Task of each registered id (unknown ids are left out, to fail on their own)."""
    with ctx.read_session() as session:
        rows = session.execute(select(SqlUser.id, SqlUser.task).where(SqlUser.id.in_(user_ids)))
        return dict(rows.tuples().all())


def _stack_states(ctx: RegistryContext, task: str | None) -> dict[str, str]:
    """user id -> "current" | "stale" | "missing", for every user (of `task`), by id."""
    from mta.registry.users.current_stacks import current_stack_banks

    with ctx.read_session() as session:
        query = select(SqlUser.id).order_by(SqlUser.id)
        if task is not None:
            query = query.where(SqlUser.task == task)
        users = list(session.scalars(query))
        current = current_stack_banks(session)
        banks = {b.id: (b.task, b.version) for b in session.scalars(select(SqlBank))}
    latest: dict[str, int] = {}
    for bank_task, version in banks.values():
        latest[bank_task] = max(latest.get(bank_task, 0), version)
    states = {}
    for user_id in users:
        if user_id not in current:
            states[user_id] = "missing"
        else:
            bank_task, version = banks[current[user_id]]
            states[user_id] = "stale" if version < latest[bank_task] else "current"
    return states


def adapt_one(
    ctx: RegistryContext,
    user_id: str,
    request: AdaptRequest,
    *,
    force: bool = False,
    refresh: bool = False,
    job: str | None = None,
) -> UserOutcome:
    """Fuse (if needed) and train one user's stack; a failure is an outcome, not an exception.

    Args:
        request: how to train.
        force: train even when the current stack already matches the request.
        refresh: first re-fuse a user whose recipe is on an older bank version than the
            task's latest (what `--stale` asks for).
        job: the bulk job's id (`WorkSpec.job`), under which the user is claimed; a fresh
            one when None. A user another job has claimed comes back `busy`.
    """

    def work(start: float) -> UserOutcome:
        phases: dict[str, float] = {}
        reason = skip_reason(ctx, user_id, request, force=force, refresh=refresh)
        if reason is not None:
            return UserOutcome(user_id, SKIPPED, time.perf_counter() - start, reason)
        stack = adapt_user(ctx, user_id, request, timings=phases)
        return UserOutcome(
            user_id, ADAPTED, time.perf_counter() - start, stack_id=stack.stack_id, phases=phases
        )

    return _claimed_work(ctx, user_id, Claimant(job or new_job_id(), "adapt"), work)


def fuse_one(
    ctx: RegistryContext,
    user_id: str,
    request: FuseRequest,
    *,
    force: bool = False,
    refresh: bool = False,
    job: str | None = None,
) -> UserOutcome:
    """Store a recipe for one user unless they have one (or `force`); failures are outcomes.

    With `refresh` (what `--stale` asks for), a user whose recipe is on an older bank
    version than the task's latest is fused again onto the latest; others are skipped.
    The user is claimed under `job` as in `adapt_one` (`busy` when another job holds it).
    """

    def work(start: float) -> UserOutcome:
        fuse = request
        detail = get_user(ctx, user_id)
        latest = newer_bank(ctx, detail) if refresh else None
        if latest is not None:
            fuse = fuse.on_bank(str(latest))
        if not force and detail.recipe is not None and fuse.bank_ref is None:
            return UserOutcome(user_id, SKIPPED, time.perf_counter() - start, "has a recipe")
        fuse_user(ctx, user_id, fuse)
        return UserOutcome(user_id, FUSED, time.perf_counter() - start)

    return _claimed_work(ctx, user_id, Claimant(job or new_job_id(), "fuse"), work)


def _claimed_work(
    ctx: RegistryContext,
    user_id: str,
    claimant: Claimant,
    work: Callable[[float], UserOutcome],
) -> UserOutcome:
    """Run `work(start)` holding the user's claim: `busy` if another job holds it, and any
    error (the claim's included) as a `failed` outcome; the claim is released either way."""
    start = time.perf_counter()
    try:
        with claimed(ctx, user_id, claimant) as holder:
            if holder is not None:
                return UserOutcome(user_id, BUSY, time.perf_counter() - start, holder.describe())
            return work(start)
    except Exception as error:  # noqa: BLE001 - one user's failure must not stop the job
        return UserOutcome(user_id, FAILED, time.perf_counter() - start, one_line(error))


@dataclass(frozen=True)
class WorkSpec:
    """What every user of a bulk job gets, here or in a Ray actor: an adapt or a fuse."""

    kind: str  # "adapt" | "fuse"
    adapt: AdaptRequest | None = None
    fuse: FuseRequest | None = None
    force: bool = False
    refresh: bool = False  # re-fuse users on an older bank version first (`--stale`)
    # The job's id: each user is claimed under it (a Ray retry re-takes its own claims).
    job: str = field(default_factory=new_job_id, compare=False)
    batch_users: int = 1  # users trained per forward/backward pass (`mta.batched_training`)
    # Where each process of the job runs its model (None: MTA_DEVICE, else auto).
    device: str | None = field(default=None, compare=False)

    @classmethod
    def adapt_users(
        cls,
        request: AdaptRequest,
        *,
        force: bool = False,
        refresh: bool = False,
        batch_users: int = 1,
        device: str | None = None,
    ) -> WorkSpec:
        """Train each user's stack as `request` says (`adapt_one`; B users per pass)."""
        if isinstance(batch_users, bool) or not isinstance(batch_users, int) or batch_users < 1:
            raise InvalidInputError(f"batch_users must be at least 1, got {batch_users!r}")
        return cls(
            "adapt",
            adapt=request.validate(),
            force=force,
            refresh=refresh,
            batch_users=batch_users,
            device=device,
        )

    @classmethod
    def fuse_users(
        cls, request: FuseRequest, *, force: bool = False, refresh: bool = False
    ) -> WorkSpec:
        """Store each user's recipe as `request` says (`fuse_one`)."""
        return cls("fuse", fuse=request.validate(), force=force, refresh=refresh)

    @property
    def verb(self) -> str:
        """What a done user was: "adapted" or "fused"."""
        return ADAPTED if self.kind == "adapt" else FUSED

    def run(self, ctx: RegistryContext, user_id: str) -> UserOutcome:
        """Do the work for one user under the job's claim; failures come back as outcomes."""
        if self.adapt is not None:
            return adapt_one(
                ctx, user_id, self.adapt, force=self.force, refresh=self.refresh, job=self.job
            )
        if self.fuse is not None:
            return fuse_one(
                ctx, user_id, self.fuse, force=self.force, refresh=self.refresh, job=self.job
            )
        raise InvalidInputError(f"a {self.kind!r} work spec without its request")

    def run_many(self, ctx: RegistryContext, user_ids: Sequence[str]) -> Iterator[UserOutcome]:
        """Each user's outcome in order: one by one, or `batch_users` per training pass."""
        if self.device is not None:
            ctx.device = self.device
        if self.adapt is None or self.batch_users == 1:
            for user_id in user_ids:
                yield self.run(ctx, user_id)
            return
        ids = list(user_ids)
        for first in range(0, len(ids), self.batch_users):
            group = ids[first : first + self.batch_users]
            yield from adapt_group(
                ctx, group, self.adapt, force=self.force, refresh=self.refresh, job=self.job
            )


def run_local(
    ctx: RegistryContext,
    user_ids: Sequence[str],
    spec: WorkSpec,
    *,
    on_outcome: Callable[[UserOutcome, int, int], None] | None = None,
) -> BulkSummary:
    """Run `spec` on each user in this process, reporting each outcome as it lands."""
    start = time.perf_counter()
    outcomes: list[UserOutcome] = []
    for outcome in spec.run_many(ctx, user_ids):
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome, len(outcomes), len(user_ids))
    return summarize(outcomes, time.perf_counter() - start)
