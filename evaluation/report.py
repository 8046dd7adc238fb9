"""Tables of an evaluation result: each method's intervals and the paired differences."""

from __future__ import annotations

from mta.eval_summary import SubsetSummary
from mta.statistics import Difference, Interval
from mta.tasks.metrics import higher_is_better


def format_interval(iv: Interval, digits: int = 3) -> str:
    """Render ``value [low, high]``."""
    return f"{iv.value:.{digits}f} [{iv.low:.{digits}f}, {iv.high:.{digits}f}]"


def format_difference(d: Difference, digits: int = 3) -> str:
    """Render ``+diff [low, high]`` with a marker when the interval excludes zero."""
    mark = {"better": " ▲", "worse": " ▼", "tie": ""}[d.verdict]
    return f"{d.diff:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]{mark}"


def results_table(summary: SubsetSummary) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the per-method table: each metric's value with its interval."""
    arrows = {m: "↑" if higher_is_better(m) else "↓" for m in summary.metrics}
    columns = ["method", *[f"{m} {arrows[m]} (95% CI)" for m in summary.metrics]]
    rows = [
        [method, *[format_interval(ivs[m]) for m in summary.metrics]]
        for method, ivs in summary.methods.items()
    ]
    return columns, rows


def differences_table(summary: SubsetSummary) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the paired-difference table (method minus the reference)."""
    columns = ["method", *[f"Δ{m} vs {summary.reference} (95% CI)" for m in summary.metrics]]
    rows = [
        [method, *[format_difference(diffs[m]) for m in summary.metrics]]
        for method, diffs in summary.differences.items()
    ]
    return columns, rows
