"""Evaluation statistics, method-free: per-item metric aggregation and bootstrap intervals.

Nothing here knows which methods exist, touches the registry or trains a model. Given
one parsed prediction per scored item, `MetricAggregator` computes a task's metrics on
any resample, `bootstrap_ci` gives 95% percentile intervals, and `paired_bootstrap` the
interval of a difference between two methods on the same resampled items (item
difficulty cancels out). `mta.evaluation.summary` assembles them per subset of items.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mta.errors import MtaError
from mta.tasks.metrics import higher_is_better, normalize_metric

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95

# Metrics that are the mean of a per-item value (so a resample costs a mean, not a re-score).
_MEAN_METRICS = frozenset({"accuracy", "acc", "mae", "rouge1", "rouge2", "rougel", "rougelsum"})
# Root-mean-square metrics: the per-item value is an absolute error.
_RMS_METRICS = frozenset({"rmse"})
# Macro-F1 over a closed label set: computed from per-class counts when labels are known.
_MACRO_F1_METRICS = frozenset({"f1", "macrof1", "f1macro"})


class EvaluationError(MtaError, ValueError):
    """Bad evaluation input: unknown method list, empty item set, misaligned predictions."""


ScoreFn = Callable[[Sequence[str], Sequence[str]], Mapping[str, float]]


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
