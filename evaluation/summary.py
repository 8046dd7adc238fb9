"""Per-subset summaries of an evaluation: every method's intervals and paired differences.

Method-free: the caller names the methods (the keys of ``predictions``) and the reference
they are compared against; `mta.evaluation.statistics` does the resampling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from mta.evaluation.statistics import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    Difference,
    EvaluationError,
    Interval,
    MetricAggregator,
    ScoreFn,
    bootstrap_ci,
    bootstrap_draws,
    paired_bootstrap,
)

SUBSETS = ("query", "all")


@dataclass(frozen=True)
class ScoredItem:
    """One item that every method predicts.

    Attributes:
        seed: split seed the item came from (seeds are pooled).
        user_id: the test entry (a registry user).
        group: the real LaMP user the entry belongs to.
        item_id: id of the query or profile item.
        kind: "query" (the user's held-out query) or "profile" (a non-shot profile item).
        gold: gold output.
    """

    seed: int
    user_id: str
    group: str
    item_id: str
    kind: str
    gold: str


@dataclass
class SubsetSummary:
    """Results of every method on one subset of the scored items ("query" or "all")."""

    subset: str
    n_items: int
    n_users: int
    reference: str
    metrics: list[str]
    # What the bootstrap resampled: "real users" (whole clusters of items) or "items".
    resampled: str = "items"
    n_groups: int = 0
    methods: dict[str, dict[str, Interval]] = field(default_factory=dict)
    differences: dict[str, dict[str, Difference]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict (intervals as {value, low, high})."""
        return {
            "subset": self.subset,
            "n_items": self.n_items,
            "n_users": self.n_users,
            "reference": self.reference,
            "metrics": self.metrics,
            "resampled": self.resampled,
            "n_groups": self.n_groups,
            "methods": {m: {k: asdict(v) for k, v in iv.items()} for m, iv in self.methods.items()},
            "differences": {
                m: {k: {**asdict(v), "verdict": v.verdict} for k, v in dv.items()}
                for m, dv in self.differences.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> SubsetSummary:
        """Rebuild a summary from ``to_dict`` output (e.g. a saved result file)."""
        fields = ("diff", "low", "high", "p_better", "p_worse")
        return cls(
            subset=data["subset"],
            n_items=data["n_items"],
            n_users=data["n_users"],
            reference=data["reference"],
            metrics=list(data["metrics"]),
            # Result files written before real-user resampling became the default lack these.
            resampled=data.get("resampled", "items"),
            n_groups=data.get("n_groups", 0),
            methods={
                m: {k: Interval(**v) for k, v in ivs.items()} for m, ivs in data["methods"].items()
            },
            differences={
                m: {k: Difference(**{f: v[f] for f in fields}) for k, v in dv.items()}
                for m, dv in data["differences"].items()
            },
        )


def summarize(
    score: ScoreFn,
    metrics: Sequence[str],
    items: Sequence[ScoredItem],
    predictions: Mapping[str, Sequence[str]],
    *,
    subset: str = "all",
    reference: str | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    cluster_by_user: bool = False,
    labels: Sequence[str] | None = None,
) -> SubsetSummary:
    """Metrics with bootstrap intervals per method, and paired differences vs the reference.

    Args:
        score: the task's score function.
        metrics: metric names in display order.
        items: every scored item (all subsets).
        predictions: method -> parsed predictions aligned with ``items``.
        subset: "query" keeps only query items; "all" keeps every item.
        reference: method the others are compared to (default: the first of ``predictions``).
        n_resamples: bootstrap resamples.
        confidence: interval coverage.
        seed: bootstrap seed.
        cluster_by_user: resample real users (the items' ``group``) instead of items;
            with a single real user in the subset there is nothing to resample between,
            so items are resampled (``resampled`` says which).
        labels: closed label set of a classification task (fast macro-F1).

    Returns:
        A ``SubsetSummary``.
    """
    if subset not in SUBSETS:
        raise EvaluationError(f"unknown subset {subset!r}; valid: {', '.join(SUBSETS)}")
    for method, preds in predictions.items():
        if len(preds) != len(items):
            raise EvaluationError(f"{method}: {len(preds)} predictions for {len(items)} items")
    rows = [i for i, it in enumerate(items) if subset == "all" or it.kind == "query"]
    if not rows:
        raise EvaluationError(f"no items in subset {subset!r}")
    methods = list(predictions)
    reference = reference or methods[0]
    if reference not in predictions:
        raise EvaluationError(f"reference method {reference!r} was not evaluated")
    golds = [items[i].gold for i in rows]
    groups = [items[i].group for i in rows]
    aggs = {
        m: MetricAggregator(score, metrics, [predictions[m][i] for i in rows], golds, labels)
        for m in methods
    }
    n_groups = len(set(groups))
    by_user = cluster_by_user and n_groups > 1
    draws = bootstrap_draws(len(rows), n_resamples, seed=seed, groups=groups if by_user else None)
    summary = SubsetSummary(
        subset=subset,
        n_items=len(rows),
        n_users=len({(items[i].seed, items[i].user_id) for i in rows}),
        reference=reference,
        metrics=list(metrics),
        resampled="real users" if by_user else "items",
        n_groups=n_groups,
    )
    for method in methods:
        summary.methods[method] = bootstrap_ci(aggs[method], draws, confidence=confidence)
    for method in methods:
        if method != reference:
            summary.differences[method] = paired_bootstrap(
                aggs[method], aggs[reference], draws, confidence=confidence
            )
    return summary
