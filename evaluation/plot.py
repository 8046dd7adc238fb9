"""PNG chart of an evaluation: one panel per metric, methods as bars with 95% bootstrap CIs."""

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
    fig, axes = plt.subplots(
        1,
        len(metrics),
        figsize=(max(5.0, 0.9 * len(methods) + 2.0) * len(metrics), 4.2),
        squeeze=False,
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
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
        ax.set_title(f"{metric} ({arrow})")
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=30, ha="right")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small")
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
