"""LaMP evaluation, the pure part: method registry, per-item scoring, bootstrap statistics, tables.

Nothing here touches the registry or trains a model. The runner
(`mta.registry.eval_runner`) produces one parsed prediction per method and scored
item; this module turns those into metric estimates with 95% bootstrap confidence
intervals and into *paired* bootstrap intervals of differences between methods (the
same resampled items for both methods, so item difficulty cancels out).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from mta.errors import MtaError, unknown_name

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95

# Tasks whose outputs are labels from a small set: the `user-majority` baseline applies.
CLASSIFICATION_TASKS = frozenset({"citation", "movie_tagging", "product_rating"})

# Metrics where a lower value is better; every other metric is higher-is-better.
_LOWER_IS_BETTER = frozenset({"mae", "rmse", "mse"})
# Metrics that are the mean of a per-item value (so a resample costs a mean, not a re-score).
_MEAN_METRICS = frozenset({"accuracy", "acc", "mae", "rouge1", "rouge2", "rougel", "rougelsum"})
# Root-mean-square metrics: the per-item value is an absolute error.
_RMS_METRICS = frozenset({"rmse"})
# Macro-F1 over a closed label set: computed from per-class counts when labels are known.
_MACRO_F1_METRICS = frozenset({"f1", "macrof1", "f1macro"})


class EvaluationError(MtaError, ValueError):
    """Bad evaluation input: unknown method list, empty item set, misaligned predictions."""


# --------------------------------------------------------------------------- method registry


@dataclass(frozen=True)
class EvalMethod:
    """One method compared by `mta eval`.

    Attributes:
        name: registry key used on the command line.
        summary: one line for tables and `--help`.
        trains: what it trains per run ("none", "pool", "per-user", "bank+per-user").
        uses_model: whether it generates with the base model (trivial baselines do not).
        needs_bank: whether it needs the anchor bank built from the pool.
        classification_only: only meaningful when outputs are labels.
    """

    name: str
    summary: str
    trains: str = "none"
    uses_model: bool = True
    needs_bank: bool = False
    classification_only: bool = False


METHODS: dict[str, EvalMethod] = {
    m.name: m
    for m in (
        EvalMethod("base", "the base model with the same retrieval prompt, no adapter"),
        EvalMethod("task-lora", "one rank-8 LoRA trained on the whole anchor pool", "pool"),
        EvalMethod("oppu", "one rank-8 LoRA per test user, from scratch on its shots", "per-user"),
        EvalMethod(
            "mta-fuse", "fused anchor LoRAs only (exact 'cat' fusion)", "bank", needs_bank=True
        ),
        EvalMethod(
            "mta",
            "fused anchors + low-rank stack trained on the shots",
            "bank+per-user",
            needs_bank=True,
        ),
        EvalMethod(
            "mta-factorwise",
            "the paper's factor-wise merge + stack (reference parity)",
            "bank+per-user",
            needs_bank=True,
        ),
        EvalMethod("retrieved", "label/output of the BM25 top-1 history item", uses_model=False),
        EvalMethod(
            "user-majority",
            "the user's most frequent label among its shots",
            uses_model=False,
            classification_only=True,
        ),
    )
}
DEFAULT_METHODS = tuple(METHODS)


def get_method(name: str) -> EvalMethod:
    """Look up an evaluation method by name (UnknownNameError lists the valid names)."""
    try:
        return METHODS[name]
    except KeyError:
        raise unknown_name("evaluation method", name, list(METHODS)) from None


def parse_methods(spec: str | Sequence[str] | None, task: str) -> tuple[list[str], list[str]]:
    """Turn a comma-separated method list into the methods that apply to a task.

    Args:
        spec: "base,mta,..." or a sequence of names; None means every method.
        task: task name; classification-only methods are dropped for generation tasks.

    Returns:
        ``(methods, skipped)``: the applicable names in the order given, and the names
        dropped because they do not apply to ``task``.

    Raises:
        UnknownNameError: a name is not a registered method.
        EvaluationError: the list is empty or names a method twice.
    """
    if spec is None:
        names = list(DEFAULT_METHODS)
    elif isinstance(spec, str):
        names = [n.strip() for n in spec.split(",") if n.strip()]
    else:
        names = [n.strip() for n in spec]
    if not names:
        raise EvaluationError("no evaluation methods given")
    if len(set(names)) != len(names):
        raise EvaluationError(f"method listed twice in {','.join(names)!r}")
    methods, skipped = [], []
    for name in names:
        method = get_method(name)
        if method.classification_only and task not in CLASSIFICATION_TASKS:
            skipped.append(name)
        else:
            methods.append(name)
    if not methods:
        raise EvaluationError(f"none of the methods {','.join(names)!r} applies to task {task!r}")
    return methods, skipped


def reference_method(methods: Sequence[str]) -> str:
    """The method others are compared against: `mta` when evaluated, else `base`, else the first."""
    for name in ("mta", "base"):
        if name in methods:
            return name
    return methods[0]


def majority_label(labels: Sequence[str]) -> str:
    """The most frequent label; ties go to the label seen first (deterministic)."""
    if not labels:
        raise EvaluationError("majority of an empty label list")
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    best = max(counts.values())
    return next(label for label in labels if counts[label] == best)


# --------------------------------------------------------------------------- scored items


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


ScoreFn = Callable[[Sequence[str], Sequence[str]], Mapping[str, float]]


def normalize_metric(name: str) -> str:
    """Lower-case a metric name and drop separators ("ROUGE-L" -> "rougel")."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def higher_is_better(metric: str) -> bool:
    """Whether larger values of the metric are better (MAE and RMSE are not)."""
    return normalize_metric(metric) not in _LOWER_IS_BETTER


class MetricAggregator:
    """Computes a task's metrics on any multiset of item indices, fast enough to bootstrap.

    Mean-type metrics (accuracy, MAE, ROUGE) and RMSE are scored once per item and
    aggregated by a mean; macro-F1 over known labels is computed from per-class counts.
    Each shortcut is checked against the task's own score on all items and dropped for a
    metric where it does not reproduce it; other metrics are re-scored by the task on
    every resample (correct, but slow).
    """

    def __init__(
        self,
        score: ScoreFn,
        metrics: Sequence[str],
        predictions: Sequence[str],
        golds: Sequence[str],
        labels: Sequence[str] | None = None,
    ) -> None:
        """Score every item once.

        Args:
            score: the task's ``score(predictions, golds) -> {metric: value}``.
            metrics: metric names to report, in order.
            predictions: parsed prediction per item.
            golds: gold output per item, aligned with ``predictions``.
            labels: the closed label set of a classification task (enables fast macro-F1).
        """
        if len(predictions) != len(golds):
            raise EvaluationError(f"{len(predictions)} predictions for {len(golds)} gold outputs")
        if not golds:
            raise EvaluationError("no items to score")
        self._score = score
        self.metrics = list(metrics)
        self._predictions = list(predictions)
        self._golds = list(golds)
        self.full = {m: float(v) for m, v in score(self._predictions, self._golds).items()}
        missing = [m for m in self.metrics if m not in self.full]
        if missing:
            raise EvaluationError(f"task score did not return metrics {missing}")
        self._per_item: dict[str, np.ndarray] = {}
        decomposable = [
            m for m in self.metrics if normalize_metric(m) in _MEAN_METRICS | _RMS_METRICS
        ]
        if decomposable:
            rows = [score([p], [g]) for p, g in zip(self._predictions, self._golds, strict=True)]
            for metric in decomposable:
                values = np.array([float(r[metric]) for r in rows], dtype=np.float64)
                if normalize_metric(metric) in _RMS_METRICS:
                    values = values**2
                self._per_item[metric] = values
                # Keep the shortcut only where it reproduces the task's own number.
                if not math.isclose(
                    self._reduce(metric, values), self.full[metric], rel_tol=1e-6, abs_tol=1e-9
                ):
                    del self._per_item[metric]
        self._label_ids: tuple[np.ndarray, np.ndarray, int] | None = None
        if labels:
            index = {label: n for n, label in enumerate(labels)}
            # Out-of-set predictions get id -1: wrong, and counted in no class.
            pred_ids = np.array([index.get(p, -1) for p in self._predictions], dtype=np.int64)
            gold_ids = np.array([index.get(g, -1) for g in self._golds], dtype=np.int64)
            self._label_ids = (pred_ids, gold_ids, len(labels))
        self._macro_f1: set[str] = set()
        for metric in self.metrics:
            if self._label_ids is None or normalize_metric(metric) not in _MACRO_F1_METRICS:
                continue
            everything = np.arange(len(self._golds))
            if math.isclose(
                self._fast_macro_f1(everything), self.full[metric], rel_tol=1e-6, abs_tol=1e-9
            ):
                self._macro_f1.add(metric)

    def _fast_macro_f1(self, indices: np.ndarray) -> float:
        """Macro-F1 over every label (a label never seen nor predicted scores 0)."""
        pred_ids, gold_ids, n = self._label_ids
        p, g = pred_ids[indices], gold_ids[indices]
        hit = (p == g) & (g >= 0)
        tp = np.bincount(g[hit], minlength=n)
        predicted = np.bincount(p[p >= 0], minlength=n)
        actual = np.bincount(g[g >= 0], minlength=n)
        denom = predicted + actual
        f1 = np.divide(2.0 * tp, denom, out=np.zeros(n), where=denom > 0)
        return float(f1.mean())

    def _reduce(self, metric: str, values: np.ndarray) -> float:
        mean = float(values.mean())
        return math.sqrt(mean) if normalize_metric(metric) in _RMS_METRICS else mean

    def __len__(self) -> int:
        return len(self._golds)

    def aggregate(self, indices: np.ndarray) -> dict[str, float]:
        """The metrics on the items at ``indices`` (repeats count, as in a bootstrap resample)."""
        out: dict[str, float] = {}
        rescored: Mapping[str, float] | None = None
        for metric in self.metrics:
            values = self._per_item.get(metric)
            if values is not None:
                out[metric] = self._reduce(metric, values[indices])
                continue
            if metric in self._macro_f1:
                out[metric] = self._fast_macro_f1(indices)
                continue
            if rescored is None:
                rescored = self._score(
                    [self._predictions[i] for i in indices], [self._golds[i] for i in indices]
                )
            out[metric] = float(rescored[metric])
        return out

    def per_item(self, metric: str) -> np.ndarray | None:
        """Per-item values of a mean-type metric (squared errors for RMSE), else None."""
        return self._per_item.get(metric)


# --------------------------------------------------------------------------- bootstrap


def bootstrap_draws(
    n: int,
    n_resamples: int = DEFAULT_RESAMPLES,
    *,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Index arrays of bootstrap resamples, shared by every method so comparisons are paired.

    Args:
        n: number of items.
        n_resamples: number of resamples.
        seed: random seed; the same seed gives the same draws.
        groups: optional cluster label per item; then whole clusters are resampled (a
            cluster bootstrap, for items that are correlated within a user).

    Returns:
        ``n_resamples`` integer arrays of item indices.
    """
    if n <= 0:
        raise EvaluationError("cannot bootstrap zero items")
    if n_resamples <= 0:
        raise EvaluationError(f"n_resamples must be positive, got {n_resamples}")
    rng = np.random.default_rng(seed)
    if groups is None:
        return list(rng.integers(0, n, size=(n_resamples, n)))
    if len(groups) != n:
        raise EvaluationError(f"{len(groups)} group labels for {n} items")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    clusters = [np.array(v, dtype=np.int64) for v in members.values()]
    draws = []
    for _ in range(n_resamples):
        picked = rng.integers(0, len(clusters), size=len(clusters))
        draws.append(np.concatenate([clusters[c] for c in picked]))
    return draws


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    value: float
    low: float
    high: float

    def contains(self, x: float) -> bool:
        """Whether ``x`` lies inside the closed interval."""
        return self.low <= x <= self.high


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise EvaluationError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_ci(
    aggregator: MetricAggregator,
    draws: Sequence[np.ndarray],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Interval]:
    """Percentile bootstrap interval of every metric.

    Args:
        aggregator: the method's scored items.
        draws: resamples from ``bootstrap_draws`` (the same for every method).
        confidence: interval coverage, 0.95 by default.

    Returns:
        Metric name -> ``Interval(value on all items, low, high)``.
    """
    samples = {m: np.empty(len(draws)) for m in aggregator.metrics}
    for j, idx in enumerate(draws):
        for metric, value in aggregator.aggregate(idx).items():
            samples[metric][j] = value
    out = {}
    for metric in aggregator.metrics:
        low, high = _percentiles(samples[metric], confidence)
        value = aggregator.full[metric]
        # A percentile interval can miss the point estimate on skewed tiny samples; widen it.
        out[metric] = Interval(value, min(low, value), max(high, value))
    return out


@dataclass(frozen=True)
class Difference:
    """Paired difference ``a - b`` of one metric with its bootstrap interval.

    ``p_better`` is the share of resamples where ``a`` is strictly better than ``b``
    (taking the metric's direction into account); ``p_worse`` where it is strictly worse.
    """

    diff: float
    low: float
    high: float
    p_better: float
    p_worse: float

    @property
    def verdict(self) -> str:
        """ "better", "worse" or "tie": whether the interval excludes zero, and on which side."""
        if self.low > 0 or self.high < 0:
            return "better" if (self.p_better > self.p_worse) else "worse"
        return "tie"


def paired_bootstrap(
    a: MetricAggregator,
    b: MetricAggregator,
    draws: Sequence[np.ndarray],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Difference]:
    """Bootstrap interval of the difference ``a - b`` on the same resampled items.

    Args:
        a: scored items of the first method.
        b: scored items of the second method (same items, same order).
        draws: shared resamples.
        confidence: interval coverage.

    Returns:
        Metric name -> ``Difference``.
    """
    if len(a) != len(b):
        raise EvaluationError(f"paired bootstrap over {len(a)} and {len(b)} items")
    metrics = [m for m in a.metrics if m in b.metrics]
    diffs = {m: np.empty(len(draws)) for m in metrics}
    for j, idx in enumerate(draws):
        va, vb = a.aggregate(idx), b.aggregate(idx)
        for metric in metrics:
            diffs[metric][j] = va[metric] - vb[metric]
    out = {}
    for metric in metrics:
        d = diffs[metric]
        low, high = _percentiles(d, confidence)
        point = a.full[metric] - b.full[metric]
        sign = 1.0 if higher_is_better(metric) else -1.0
        out[metric] = Difference(
            diff=point,
            low=min(low, point),
            high=max(high, point),
            p_better=float(np.mean(sign * d > 0)),
            p_worse=float(np.mean(sign * d < 0)),
        )
    return out


# --------------------------------------------------------------------------- summaries


@dataclass
class SubsetSummary:
    """Results of every method on one subset of the scored items ("query" or "all")."""

    subset: str
    n_items: int
    n_users: int
    reference: str
    metrics: list[str]
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
            methods={
                m: {k: Interval(**v) for k, v in ivs.items()} for m, ivs in data["methods"].items()
            },
            differences={
                m: {k: Difference(**{f: v[f] for f in fields}) for k, v in dv.items()}
                for m, dv in data["differences"].items()
            },
        )


SUBSETS = ("query", "all")


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
        reference: method the others are compared to (default ``reference_method``).
        n_resamples: bootstrap resamples.
        confidence: interval coverage.
        seed: bootstrap seed.
        cluster_by_user: resample real users instead of items.
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
    reference = reference or reference_method(methods)
    if reference not in predictions:
        raise EvaluationError(f"reference method {reference!r} was not evaluated")
    golds = [items[i].gold for i in rows]
    groups = [items[i].group for i in rows]
    aggs = {
        m: MetricAggregator(score, metrics, [predictions[m][i] for i in rows], golds, labels)
        for m in methods
    }
    draws = bootstrap_draws(
        len(rows), n_resamples, seed=seed, groups=groups if cluster_by_user else None
    )
    summary = SubsetSummary(
        subset=subset,
        n_items=len(rows),
        n_users=len({(items[i].seed, items[i].user_id) for i in rows}),
        reference=reference,
        metrics=list(metrics),
    )
    for method in methods:
        summary.methods[method] = bootstrap_ci(aggs[method], draws, confidence=confidence)
    for method in methods:
        if method != reference:
            summary.differences[method] = paired_bootstrap(
                aggs[method], aggs[reference], draws, confidence=confidence
            )
    return summary


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
