"""Progress on stderr for long service calls: a rich bar per stage, or plain lines in logs.

The service layer reports progress through `mta.progress.ProgressFn`
(stage, done, total). `StageProgress` is such a callable: on a terminal it draws one
rich bar per stage; when stderr is a file or a pipe (CI logs, `--json` piped into jq)
it prints one line when a stage starts and one when it ends, so logs stay short.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mta.cli.output import log, stderr_console


class StageProgress:
    """A `ProgressFn` for the service layer that renders on stderr; use it as a context manager."""

    def __init__(self, *, enabled: bool = True) -> None:
        """Prepare the display; `enabled=False` makes every call a no-op."""
        self.enabled = enabled
        console = stderr_console()
        self._live = enabled and console.is_terminal
        self._progress: Progress | None = None
        if self._live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
        self._tasks: dict[str, TaskID] = {}
        self._started: dict[str, float] = {}
        self._finished: set[str] = set()

    def __enter__(self) -> StageProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        """Record that `done` of `total` units of `stage` are finished."""
        if not self.enabled:
            return
        if self._progress is not None:
            self._update_bar(self._progress, stage, done, total)
        else:
            self._update_log(stage, done, total)

    def _update_bar(self, progress: Progress, stage: str, done: int, total: int) -> None:
        # total <= 0 means "unknown": rich shows a pulsing bar for total=None.
        task = self._tasks.get(stage)
        if task is None:
            task = progress.add_task(stage, total=max(total, 0) or None)
            self._tasks[stage] = task
        progress.update(task, completed=done, total=max(total, 0) or None)

    def _update_log(self, stage: str, done: int, total: int) -> None:
        if stage not in self._started:
            self._started[stage] = time.monotonic()
            log(f"{stage}: started ({total} steps)" if total > 0 else f"{stage}: started")
        if total > 0 and done >= total and stage not in self._finished:
            self._finished.add(stage)
            seconds = time.monotonic() - self._started[stage]
            log(f"{stage}: {done}/{total} done in {seconds:.1f}s")
