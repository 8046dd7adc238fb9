"""What a bulk job reports: one outcome per user, and the job's summary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

ADAPTED, SKIPPED, FAILED, FUSED, ADDED = "adapted", "skipped", "failed", "fused", "added"
BUSY = "busy"  # claimed by another job at the time: left to it, not a failure


@dataclass(frozen=True)
class UserOutcome:
    """What happened to one user of a bulk job."""

    user_id: str
    status: str  # "adapted" | "fused" | "added" | "skipped" | "busy" | "failed"
    seconds: float
    reason: str = ""  # one line, for "failed", "skipped" and "busy"
    stack_id: int | None = None
    phases: dict[str, float] = field(default_factory=dict)  # fuse / train / commit seconds

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values."""
        return asdict(self)


@dataclass(frozen=True)
class BulkSummary:
    """A bulk job's result: who was done, skipped, busy (another job's) or failed, how fast."""

    done: tuple[str, ...]
    skipped: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]  # (user id, one-line reason)
    wall_seconds: float
    seconds_p50: float
    seconds_p99: float
    users_per_minute: float
    phase_means: dict[str, float]
    busy: tuple[str, ...] = ()  # claimed by another job while this one ran: re-run for them

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (`failed` as a list of {user_id, reason})."""
        data = asdict(self)
        data["failed"] = [{"user_id": u, "reason": r} for u, r in self.failed]
        return data


def summarize(outcomes: Sequence[UserOutcome], wall_seconds: float) -> BulkSummary:
    """Aggregate per-user outcomes: seconds per worked user (p50, p99) and users per minute."""
    worked = [o.seconds for o in outcomes if o.status not in (SKIPPED, BUSY, FAILED)]
    phases: dict[str, list[float]] = {}
    for outcome in outcomes:
        for phase, seconds in outcome.phases.items():
            phases.setdefault(phase, []).append(seconds)
    return BulkSummary(
        done=tuple(o.user_id for o in outcomes if o.status in (ADAPTED, FUSED, ADDED)),
        skipped=tuple(o.user_id for o in outcomes if o.status == SKIPPED),
        failed=tuple((o.user_id, o.reason) for o in outcomes if o.status == FAILED),
        wall_seconds=wall_seconds,
        seconds_p50=float(np.percentile(worked, 50)) if worked else 0.0,
        seconds_p99=float(np.percentile(worked, 99)) if worked else 0.0,
        users_per_minute=(60.0 * len(worked) / wall_seconds) if wall_seconds > 0 else 0.0,
        phase_means={p: float(np.mean(v)) for p, v in sorted(phases.items())},
        busy=tuple(o.user_id for o in outcomes if o.status == BUSY),
    )
