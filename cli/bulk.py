"""Bulk user jobs in the CLI: the selection as typed, the executor, progress and the summary.

Progress is a rich bar on a terminal (users done / total, users per minute, ETA); in logs
(stderr a file or a pipe) each finished user is one line, so a long job's log says who
was done when. `user_add.py`, `user_fuse.py` and `user_adapt.py` hold the commands that
use this, with the option aliases declared at the end of this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from mta.cli.options import fits_int64, registry_context
from mta.cli.output import Output, log, stderr_console

if TYPE_CHECKING:
    from mta.registry.context import RegistryContext
    from mta.registry.service import BulkSummary, UserOutcome, WorkSpec


class _UsersPerMinute(ProgressColumn):
    """Finished users per minute since the bar started."""

    def render(self, task: Task) -> Text:
        """`12.3 users/min`, or `-` before the first user lands."""
        elapsed = task.elapsed or 0.0
        if not task.completed or elapsed <= 0:
            return Text("- users/min")
        return Text(f"{60.0 * task.completed / elapsed:.1f} users/min")


class BulkProgress:
    """`on_outcome(outcome, done, total)` for bulk runners; use it as a context manager."""

    def __init__(self, label: str, total: int) -> None:
        """Prepare a bar for `total` users labelled `label` (e.g. "adapt")."""
        self.label = label
        self.total = total
        console = stderr_console()
        self._progress: Progress | None = None
        if console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _UsersPerMinute(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                # ETA from the last ten minutes of users, not rich's default 30 s window,
                # which holds no finished user when each takes longer than that.
                speed_estimate_period=600.0,
            )
            self._task = self._progress.add_task(f"{label} users", total=total, start=False)

    def __enter__(self) -> BulkProgress:
        if self._progress is not None:
            self._progress.start()
            self._progress.start_task(self._task)
        elif self.total:
            log(f"{self.label}: {self.total} user(s) selected")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, outcome: UserOutcome, done: int, total: int) -> None:
        """Record that `outcome` landed, the `done`-th of `total`."""
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)
            if outcome.status == "failed":
                self._progress.console.print(
                    Text(f"{outcome.user_id}: failed: {outcome.reason}"), highlight=False
                )
            return
        log(f"[{done}/{total}] {outcome_line(outcome)}")


def outcome_line(outcome: UserOutcome) -> str:
    """One line for one user: status, seconds, phases or reason."""
    line = f"{outcome.user_id} {outcome.status} in {outcome.seconds:.1f}s"
    if outcome.phases:
        line += " (" + ", ".join(f"{k} {v:.1f}s" for k, v in outcome.phases.items()) + ")"
    if outcome.reason:
        line += f": {outcome.reason}"
    return line


def render_summary(
    out: Output, summary: BulkSummary, outcomes: Sequence[UserOutcome], verb: str
) -> None:
    """The job's summary: JSON (summary + per-user outcomes), or failures and one line.

    Users another job held (`busy`) are counted, and noted on a line of their own.
    """
    if out.json_mode:
        out.emit_json({**summary.to_dict(), "users": [o.to_dict() for o in outcomes]})
        return
    if not outcomes:
        out.result("nothing to do: no user selected")
        return
    if summary.failed:
        out.table(["User", "Reason"], summary.failed, title="Failed users")
    # Busy users (claimed by another job at the time) are counted only when there are some.
    busy = f"busy {len(summary.busy)}, " if summary.busy else ""
    line = (
        f"{verb} {len(summary.done)}, skipped {len(summary.skipped)}, {busy}"
        f"failed {len(summary.failed)} in {summary.wall_seconds:.1f} s"
    )
    if summary.done:
        line += (
            f" ({summary.users_per_minute:.1f} users/min; per user p50 "
            f"{summary.seconds_p50:.1f} s, p99 {summary.seconds_p99:.1f} s)"
        )
    if summary.phase_means:
        phases = ", ".join(f"{k} {v:.2f} s" for k, v in summary.phase_means.items())
        line += f"; mean {phases}"
    out.result(line)
    if summary.busy:
        out.result(
            f"{len(summary.busy)} user(s) busy in another job, left to it: "
            "re-run this command once it ends for any it did not finish"
        )


class Executor(str, Enum):
    """Where a bulk job's users run."""

    local = "local"
    ray = "ray"


@dataclass(frozen=True)
class Selection:
    """Which users a command names, as typed."""

    ids: list[str]
    from_file: Path | None = None
    all_users: bool = False
    stale: bool = False
    missing: bool = False
    task: str | None = None

    def is_bulk(self) -> bool:
        """Anything but exactly one id and no flag."""
        flags = self.from_file or self.all_users or self.stale or self.missing or self.task
        return bool(flags) or len(self.ids) != 1

    def resolve(self, ctx: RegistryContext) -> list[str]:
        """The selected user ids (arguments first, then `--from`, then the flags).

        Raises:
            UnknownNameError: `--bank` names no task (checked first, so a typo there is
                named rather than reported as an empty selection).
        """
        from mta.registry.service import read_id_file, select_users

        if self.task is not None:
            check_bank_filter(self.task)
        ids = list(self.ids) + (read_id_file(self.from_file) if self.from_file else [])
        return select_users(
            ctx,
            ids=ids,
            all_users=self.all_users,
            stale=self.stale,
            missing=self.missing,
            task=self.task,
        )


def check_bank_filter(task: str) -> None:
    """UnknownNameError (listing the valid names) unless `--bank` names a known task."""
    from mta.tasks import get_task

    get_task(task)


@dataclass(frozen=True)
class Execution:
    """How a bulk job runs: the executor and its options."""

    executor: Executor = Executor.local
    address: str | None = None
    workers: int = 2
    gpus_per_worker: float = 0.0  # GPUs each Ray worker reserves (its model goes on one)


def run_bulk(
    ctx: typer.Context,
    selection: Selection,
    spec: WorkSpec,
    execution: Execution,
    json_mode: bool,
) -> None:
    """Select users, run `spec` on each (here or on Ray), render the summary; 1 on failures."""
    from mta.registry.service import run_local

    out = Output(json_mode)
    outcomes: list[UserOutcome] = []
    with registry_context(ctx) as registry:
        user_ids = selection.resolve(registry)
        with BulkProgress(spec.kind, len(user_ids)) as progress:

            def on_outcome(outcome: UserOutcome, done: int, total: int) -> None:
                outcomes.append(outcome)
                progress(outcome, done, total)

            if execution.executor is Executor.ray and user_ids:
                summary = _run_ray(registry, user_ids, spec, execution, on_outcome)
            else:
                summary = run_local(registry, user_ids, spec, on_outcome=on_outcome)
    finish(out, summary, outcomes, spec.verb)


def _run_ray(
    registry: RegistryContext,
    user_ids: list[str],
    spec: WorkSpec,
    execution: Execution,
    on_outcome: Callable[[UserOutcome, int, int], None],
) -> BulkSummary:
    """The Ray executor (imported only when asked for: Ray is an optional dependency)."""
    from mta.registry.service import run_ray

    return run_ray(
        registry,
        user_ids,
        spec,
        address=execution.address,
        workers=execution.workers,
        num_gpus=execution.gpus_per_worker,
        on_outcome=on_outcome,
    )


def finish(out: Output, summary: BulkSummary, outcomes: list[UserOutcome], verb: str) -> None:
    """Render the summary; exit 1 when any user failed (busy users are not failures)."""
    render_summary(out, summary, outcomes, verb)
    if summary.failed:
        raise typer.Exit(1)


# --- the selection and execution options of `mta user add|fuse|adapt` ----------------

_SELECT = "Selection (several users: a bulk job)"
_RUN = "Bulk execution"


IdsArg = Annotated[
    list[str] | None,
    typer.Argument(help="User id(s); several make a bulk job.", metavar="ID", show_default=False),
]
FromOpt = Annotated[
    Path | None,
    typer.Option("--from", help="File of user ids, one per line.", rich_help_panel=_SELECT),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every user.", rich_help_panel=_SELECT)]
StaleOpt = Annotated[
    bool,
    typer.Option(
        "--stale",
        help="Users whose current stack is on an older bank version (re-fused onto the latest).",
        rich_help_panel=_SELECT,
    ),
]
MissingOpt = Annotated[
    bool,
    typer.Option("--missing", help="Users without a current stack.", rich_help_panel=_SELECT),
]
BankFilterOpt = Annotated[
    str | None,
    typer.Option("--bank", help="Only users of this task.", rich_help_panel=_SELECT),
]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force", help="Redo users whose current result already matches.", rich_help_panel=_RUN
    ),
]
ExecutorOpt = Annotated[
    Executor,
    typer.Option("--executor", help="Run users in this process or on Ray.", rich_help_panel=_RUN),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address", help="Ray cluster address (default: start a local one).", rich_help_panel=_RUN
    ),
]
WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers", min=1, callback=fits_int64, help="Ray workers.", rich_help_panel=_RUN
    ),
]
GpusPerWorkerOpt = Annotated[
    float,
    typer.Option(
        "--gpus-per-worker",
        min=0.0,
        max=64.0,
        help="GPUs each Ray worker reserves; its model runs on one (with --device auto/cuda).",
        rich_help_panel=_RUN,
    ),
]
BatchUsersOpt = Annotated[
    int,
    typer.Option(
        "--batch-users",
        min=1,
        max=4096,
        help="Users trained per forward/backward pass (bulk adapt). 1 on the CPU, where "
        "batching was measured slower; larger on a GPU.",
        rich_help_panel=_RUN,
    ),
]
