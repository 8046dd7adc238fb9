"""PNG chart of an evaluation: one panel per metric, methods as bars with 95% bootstrap CIs.

A second row, when the result has a per-real-user breakdown, shows each method's score per
test user (a dot per user) and the reference method's gain over the base model per user.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mta.tasks.metrics import higher_is_better

# Subset -> (label, colour); "all" is drawn only when it holds more items than "query".
_SUBSET_STYLE = {"query": ("query only", "#4C72B0"), "all": ("all items", "#DD8452")}


def plot_results(results: Mapping, path: str | Path, *, title: str | None = None) -> Path:
    """Draw the method comparison of an evaluation result and save it as a PNG.

    Args:
        results: the evaluation result dict (``subsets`` -> subset summaries as written by
            ``SubsetSummary.to_dict``, plus ``task``).
        path: output file; parent folders are created.
        title: figure title (default: the task name and item counts).

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    subsets = _subsets_to_draw(results["subsets"])
    first = results["subsets"][subsets[0]]
    metrics: Sequence[str] = first["metrics"]
    methods: Sequence[str] = list(first["methods"])
    width = 0.8 / len(subsets)
    per_user = results.get("per_user") or {}
    rows = 2 if per_user.get("users") else 1
    fig, axes = plt.subplots(
        rows,
        max(len(metrics), 2 if rows == 2 else 1),
        figsize=(max(5.0, 0.9 * len(methods) + 2.0) * max(len(metrics), 2), 4.2 * rows),
        squeeze=False,
    )
    for ax, metric in zip(axes[0], metrics, strict=False):
        for s, subset in enumerate(subsets):
            label, colour = _SUBSET_STYLE[subset]
            summary = results["subsets"][subset]
            values, lows, highs = [], [], []
            for method in methods:
                iv = summary["methods"][method][metric]
                values.append(iv["value"])
                lows.append(iv["value"] - iv["low"])
                highs.append(iv["high"] - iv["value"])
            xs = [i + (s - (len(subsets) - 1) / 2) * width for i in range(len(methods))]
            ax.bar(
                xs,
                values,
                width,
                yerr=[lows, highs],
                capsize=3,
                color=colour,
                label=f"{label} (n={summary['n_items']})",
            )
        arrow = "higher is better" if higher_is_better(metric) else "lower is better"
        resampled = results["subsets"][subsets[0]].get("resampled", "items")
        ax.set_title(f"{metric} ({arrow}); CIs resample {resampled}")
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=30, ha="right")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[0][len(metrics) :]:
        ax.set_visible(False)
    if rows == 2:
        _draw_per_user(axes[1], per_user, methods)
    fig.suptitle(title or f"LaMP {results.get('task', '')}: mean and 95% bootstrap CI")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _subsets_to_draw(subsets: Mapping) -> list[str]:
    """The subsets worth a bar: "query", plus "all" when it adds items."""
    names = [s for s in ("query", "all") if s in subsets]
    if (
        "query" in names
        and "all" in names
        and (subsets["all"]["n_items"] == subsets["query"]["n_items"])
    ):
        names.remove("all")
    return names


def _draw_per_user(axes: Sequence, per_user: Mapping, methods: Sequence[str]) -> None:
    """Per-user scores (a dot per user and method) and the per-user gain bars."""
    metric = per_user["metrics"][0]
    users = per_user["users"]
    scores_ax, gain_ax = axes[0], axes[1]
    for i, method in enumerate(methods):
        values = [u["scores"][method][metric] for u in users]
        # A small fixed spread keeps users with equal scores visible as separate dots.
        xs = [i + (j / max(len(users) - 1, 1) - 0.5) * 0.4 for j in range(len(users))]
        scores_ax.scatter(xs, values, s=14, alpha=0.7)
    scores_ax.set_xticks(range(len(methods)))
    scores_ax.set_xticklabels(methods, rotation=30, ha="right")
    scores_ax.set_title(f"{metric} per real test user ({len(users)} users, {per_user['subset']})")
    scores_ax.grid(axis="y", alpha=0.3)
    gain_of, over = per_user.get("gain_of"), per_user.get("over")
    if not gain_of:
        gain_ax.set_visible(False)
    else:
        ranked = sorted(users, key=lambda u: u["gain"][metric])
        gains = [u["gain"][metric] for u in ranked]
        good = [(g > 0) == higher_is_better(metric) for g in gains]
        colours = [
            "#55A868" if ok and g != 0 else "#C44E52" if g != 0 else "#8C8C8C"
            for g, ok in zip(gains, good, strict=True)
        ]
        gain_ax.bar(range(len(ranked)), gains, color=colours)
        gain_ax.axhline(0.0, color="black", linewidth=0.8)
        gain_ax.set_xticks(range(len(ranked)))
        gain_ax.set_xticklabels(
            [str(u["user"]) for u in ranked], rotation=60, ha="right", fontsize="x-small"
        )
        counts = per_user.get("gain_counts") or {}
        gain_ax.set_title(
            f"{gain_of} − {over} per real user ({metric}): better {counts.get('better', 0)}, "
            f"equal {counts.get('tie', 0)}, worse {counts.get('worse', 0)}"
        )
        gain_ax.grid(axis="y", alpha=0.3)
    for ax in axes[2:]:
        ax.set_visible(False)
