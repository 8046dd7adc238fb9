"""Tables of an evaluation result: each method's intervals and the paired differences."""

from __future__ import annotations

from mta.evaluation.statistics import Difference, Interval
from mta.evaluation.summary import SubsetSummary
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


def per_user_table(per_user: dict) -> tuple[list[str], list[list[str]], str]:
    """Columns, rows and title of the per-real-user table (first metric only)."""
    metric = per_user["metrics"][0]
    methods = list(per_user["users"][0]["scores"])
    gain_of, over = per_user.get("gain_of"), per_user.get("over")
    columns = ["real user", "entries (× seeds)", "items", *methods]
    if gain_of:
        columns.append(f"{gain_of} − {over}")
    rows = []
    for user in per_user["users"]:
        row = [str(user["user"]), str(user["entries"]), str(user["n_items"])]
        row += [f"{user['scores'][m][metric]:.3f}" for m in methods]
        if gain_of:
            row.append(f"{user['gain'][metric]:+.3f}")
        rows.append(row)
    title = f"per real user: {metric} on {_subset_words(per_user['subset'])}"
    counts = per_user.get("gain_counts")
    if counts:
        title += (
            f"; {gain_of} better than {over} for {counts['better']} users, "
            f"equal for {counts['tie']}, worse for {counts['worse']}"
        )
    return columns, rows, title


def versus_line(per_user: dict) -> str | None:
    """One line: per method, real users better / equal / worse than the compared method."""
    versus, over = per_user.get("versus"), per_user.get("over")
    if not versus:
        return None
    parts = [f"{m} {c['better']}/{c['tie']}/{c['worse']}" for m, c in versus.items()]
    return f"real users better/equal/worse than {over}: " + ", ".join(parts)


def _subset_words(subset: str) -> str:
    """How a subset is named in a title."""
    return "queries only" if subset == "query" else "all scored items"
