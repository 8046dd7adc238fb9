"""Bulk personalization on Ray: actors that each load the base model once take units of users.

Each actor opens its own `RegistryContext` on the shared registry (PostgreSQL + S3 across
machines) and runs `adapt_one`/`fuse_one` per user, committing user by user exactly as the
local executor does; only a per-unit list of outcomes travels back through Ray.

Fault tolerance is the driver's, not Ray's actor restarts: actors are created with
`max_restarts=0`, and when one dies (`kill -9`, a lost node) the driver re-queues the units
it held, sends them to live actors and starts a replacement. Ray's `max_task_retries`
would retry a unit on the *same* actor once it restarts, which after a node loss waits for
a slot that may never come back, retries without bound and hides the failure from the
driver; here a unit has `UNIT_ATTEMPTS` tries, each logged, and an actor only gets units
once it answered `ready()`. Re-running a unit is safe: `adapt_one` skips users whose
current stack already matches, so the retry only trains the users that had not committed.
A user killed between its commit and the report is skipped on the retry; a retry racing a
still-running attempt (a partitioned, not dead, actor) can leave one extra *superseded*
stack, never two current ones, and `mta gc` reclaims it.

Every actor works under the job's id (`WorkSpec.job`, shipped with the spec): a user is
claimed for the job (`claims.py`) while an actor works on it, so another job (local, HTTP
or Ray) reports it `busy` instead of training it too. The claim a dead actor left belongs
to this job, so the unit's retry takes it over at once; a dead *job*'s claims expire.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mta.errors import one_line
from mta.registry.context import RegistryContext
from mta.registry.jobs.bulk import WorkSpec
from mta.registry.jobs.outcomes import FAILED, BulkSummary, UserOutcome, summarize
from mta.registry.jobs.ray_cluster import (
    ray_session,
    reserve_worker_cpus,
    worker_env,
    worker_locations,
)

log = logging.getLogger(__name__)

MAX_UNIT = 16  # users per unit at most: a lost worker costs little to redo
UNIT_ATTEMPTS = 3  # a unit whose worker died this often is reported as failed
INFLIGHT_PER_WORKER = 2  # one running and one queued: no idle gap, little lost on a death
WORKER_START_TIMEOUT = 600.0  # seconds for an actor to answer ready() (model-free; Ray start)
_POLL_SECONDS = 1.0


class BulkWorker:
    """A Ray actor's body: one registry context per process, so the model loads once."""

    def __init__(self, db_url: str, store_url: str, cache_dir: str, spec: WorkSpec) -> None:
        """Remember where the registry is; `ready()` opens it."""
        self.locations = (db_url, store_url, cache_dir)
        self.spec = spec
        self.ctx: RegistryContext | None = None

    def ready(self) -> str:
        """Open the registry and check its schema; returns this worker's node id.

        Opened here rather than in `__init__`: an error raised by a method reaches the
        driver as itself (e.g. NotInitializedError), one raised by a constructor does not.
        """
        import ray

        reserve_worker_cpus(ray)
        self.ctx = RegistryContext.open(*self.locations)
        with self.ctx.read_session():
            pass
        return ray.get_runtime_context().get_node_id()

    def run_unit(self, user_ids: list[str]) -> list[dict[str, Any]]:
        """Work through one unit, committing user by user; only the outcomes come back."""
        ctx = self.ctx or RegistryContext.open(*self.locations)
        self.ctx = ctx
        return [outcome.to_dict() for outcome in self.spec.run_many(ctx, user_ids)]


@dataclass
class _Unit:
    """A slice of the users and how many of its tries a worker died in."""

    user_ids: list[str]
    attempts: int = 0
    last_error: str = ""


def run_ray(
    ctx: RegistryContext,
    user_ids: Sequence[str],
    work_spec: WorkSpec,
    *,
    address: str | None = None,
    workers: int = 2,
    unit: int | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    on_outcome: Callable[[UserOutcome, int, int], None] | None = None,
) -> BulkSummary:
    """Run `work_spec` for each user on Ray actors and summarize, like `run_local`.

    Args:
        ctx: the driver's registry; the workers open the same database and store.
        user_ids: the selected users (`select_users`).
        work_spec: `WorkSpec.adapt_users(...)` or `WorkSpec.fuse_users(...)`.
        address: None/"local" (a private Ray on this machine), "auto", "HOST:PORT" or
            "ray://HOST:PORT" (an existing cluster).
        workers: number of actors; each loads the base model once.
        unit: users per unit of work sent to an actor; default `unit_size`.
        num_cpus, num_gpus: Ray resources each actor reserves (one actor per GPU: 1.0).
        on_outcome: called as (outcome, done, total) as each unit's outcomes land.

    Raises:
        InvalidInputError: Ray is missing, bad counts, or a SQLite / file:// registry with
            nodes on other machines (see `ray_cluster.check_local_registry`).
        Exception: the workers' own error when none of them could start (e.g. an
            uninitialized registry).
    """
    from mta.registry.errors import InvalidInputError

    ids = list(user_ids)
    unit = unit_size(len(ids), workers) if unit is None else unit
    if workers < 1 or unit < 1:
        raise InvalidInputError(f"--workers and the unit size must be >= 1 (got {workers}, {unit})")
    if not ids:
        return summarize([], 0.0)
    start = time.perf_counter()
    with ray_session(ctx, address, num_cpus=max(1, int(workers * max(num_cpus, 1)))) as ray:
        options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": 0}
        env = worker_env()
        if env:
            options["runtime_env"] = {"env_vars": env}
        actor_class = ray.remote(BulkWorker).options(**options)
        driver = _Driver(ray, lambda: actor_class.remote(*worker_locations(ctx), work_spec))
        units = [_Unit(ids[i : i + unit]) for i in range(0, len(ids), unit)]
        outcomes = driver.run(units, min(workers, len(units)), len(ids), on_outcome)
    return summarize(outcomes, time.perf_counter() - start)


def unit_size(users: int, workers: int) -> int:
    """Users per unit: every worker's in-flight slots get a unit, and at most `MAX_UNIT`.

    A fixed 16 sent 12 users to one actor as one unit while the other idled (the bulk
    benchmark's Ray row ran at 0.62x of one process); splitting into at least
    `workers * INFLIGHT_PER_WORKER` units keeps every worker busy to the end.
    """
    slots = max(1, workers) * INFLIGHT_PER_WORKER
    return max(1, min(MAX_UNIT, math.ceil(users / slots)))


class _Driver:
    """Feeds units to ready actors (bounded in flight), retries units whose actor died."""

    def __init__(self, ray: Any, new_actor: Callable[[], Any]) -> None:
        self.ray = ray
        self.new_actor = new_actor
        self.pending: deque[_Unit] = deque()
        self.ready: dict[int, Any] = {}  # actor key -> handle
        self.load: dict[int, int] = {}  # actor key -> units in flight
        self.starting: dict[Any, tuple[int, Any, float]] = {}  # ready() ref -> key, actor, t0
        self.running: dict[Any, tuple[int, _Unit]] = {}  # run_unit() ref -> key, unit
        self.outcomes: list[UserOutcome] = []
        self.start_error: BaseException | None = None
        self._keys = 0
        self.replacements = 0

    def run(
        self,
        units: list[_Unit],
        workers: int,
        total: int,
        on_outcome: Callable[[UserOutcome, int, int], None] | None,
    ) -> list[UserOutcome]:
        """Drive every unit to an outcome; returns the outcomes in landing order."""
        self.pending.extend(units)
        self.replacements = 2 * workers  # replacements for dead actors, over the whole job
        for _ in range(workers):
            self._start_actor()
        reported = 0
        try:
            while self.pending or self.running:
                self._assign()
                if not self.running and not self.starting:
                    self._no_worker_left()
                    break
                refs = [*self.running, *self.starting]
                done, _ = self.ray.wait(refs, num_returns=1, timeout=_POLL_SECONDS)
                for ref in done:
                    self._land(ref)
                self._expire_starts()
                for outcome in self.outcomes[reported:]:
                    reported += 1
                    if on_outcome is not None:
                        on_outcome(outcome, reported, total)
        finally:
            for actor in [*self.ready.values(), *(a for _, a, _ in self.starting.values())]:
                _kill(self.ray, actor)
        return self.outcomes

    def _start_actor(self) -> None:
        self._keys += 1
        actor = self.new_actor()
        self.starting[actor.ready.remote()] = (self._keys, actor, time.monotonic())

    def _assign(self) -> None:
        """Give queued units to the least loaded ready actors, up to the in-flight bound."""
        while self.pending and self.ready:
            key = min(self.ready, key=lambda k: self.load[k])
            if self.load[key] >= INFLIGHT_PER_WORKER:
                return
            unit = self.pending.popleft()
            self.running[self.ready[key].run_unit.remote(unit.user_ids)] = (key, unit)
            self.load[key] += 1

    def _land(self, ref: Any) -> None:
        """Handle one finished ready() or run_unit() call."""
        ray_errors = self.ray.exceptions
        if ref in self.starting:
            key, actor, _ = self.starting.pop(ref)
            try:
                node = self.ray.get(ref)
            except ray_errors.RayError as error:
                self.start_error = getattr(error, "cause", None) or error
                log.warning("a Ray worker failed to start: %s", one_line(error, first_line=True))
                return
            log.info("Ray worker %d ready on node %s", key, node[:12])
            self.ready[key], self.load[key] = actor, 0
            return
        key, unit = self.running.pop(ref)
        self.load[key] = self.load.get(key, 1) - 1
        try:
            results = self.ray.get(ref)
        except ray_errors.RayActorError as error:
            self._worker_died(key, unit, error)
            return
        except ray_errors.RayError as error:  # the unit itself raised: retrying will not help
            reason = one_line(getattr(error, "cause", None) or error, first_line=True)
            self.outcomes.extend(UserOutcome(u, FAILED, 0.0, reason) for u in unit.user_ids)
            return
        self.outcomes.extend(UserOutcome(**r) for r in results)

    def _worker_died(self, key: int, unit: _Unit, error: BaseException) -> None:
        """Re-queue the unit (first in line) and replace the dead actor while budget lasts."""
        unit.attempts += 1
        unit.last_error = one_line(error, first_line=True)
        if self.ready.pop(key, None) is not None:
            log.warning("Ray worker %d died: %s", key, unit.last_error)
            if self.replacements > 0:
                self.replacements -= 1
                self._start_actor()
        if unit.attempts >= UNIT_ATTEMPTS:
            reason = f"worker died {unit.attempts} times on this unit: {unit.last_error}"
            self.outcomes.extend(UserOutcome(u, FAILED, 0.0, reason) for u in unit.user_ids)
            return
        log.warning(
            "retrying a unit of %d users (try %d of %d) on another worker",
            len(unit.user_ids),
            unit.attempts + 1,
            UNIT_ATTEMPTS,
        )
        self.pending.appendleft(unit)

    def _expire_starts(self) -> None:
        """Give up on actors Ray could not place or start in time (e.g. no free resources)."""
        now = time.monotonic()
        for ref, (_key, actor, t0) in list(self.starting.items()):
            if now - t0 > WORKER_START_TIMEOUT:
                del self.starting[ref]
                _kill(self.ray, actor)
                log.warning("a Ray worker did not start within %.0f s", WORKER_START_TIMEOUT)

    def _no_worker_left(self) -> None:
        """No actor is alive or starting: fail what is left, or raise why none could start."""
        if not self.ready and not self.outcomes and self.start_error is not None:
            raise self.start_error
        reason = "no Ray worker left to run this unit"
        while self.pending:
            unit = self.pending.popleft()
            why = f"{reason} ({unit.last_error})" if unit.last_error else reason
            self.outcomes.extend(UserOutcome(u, FAILED, 0.0, why) for u in unit.user_ids)


def _kill(ray: Any, actor: Any) -> None:
    """End an actor of this job (one that already died is nothing to end)."""
    try:
        ray.kill(actor, no_restart=True)
    except Exception as error:  # noqa: BLE001 - cleanup must not hide the job's result
        log.debug("could not kill a Ray worker: %s", error)
