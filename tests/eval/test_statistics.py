"""Bootstrap intervals, paired differences, the metric aggregator and subset summaries."""

from __future__ import annotations

import numpy as np
import pytest

from mta.evaluation.statistics import (
    EvaluationError,
    MetricAggregator,
    bootstrap_ci,
    bootstrap_draws,
    paired_bootstrap,
)
from mta.evaluation.summary import ScoredItem, summarize


def accuracy_score(preds, golds):
    """Accuracy plus a non-decomposable metric (share of distinct labels predicted right)."""
    hits = [p == g for p, g in zip(preds, golds, strict=True)]
    right_labels = {g for p, g in zip(preds, golds, strict=True) if p == g}
    return {"accuracy": float(np.mean(hits)), "label_recall": len(right_labels) / len(set(golds))}


def error_score(preds, golds):
    """MAE and RMSE of numeric strings, like product rating."""
    err = np.array([float(p) - float(g) for p, g in zip(preds, golds, strict=True)])
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean()))}


def _labels(n: int, seed: int, p_right: float) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    golds = [str(x) for x in rng.integers(0, 4, size=n)]
    preds = [g if rng.random() < p_right else "x" for g in golds]
    return preds, golds


def test_bootstrap_ci_covers_the_point_estimate():
    preds, golds = _labels(60, 0, 0.6)
    agg = MetricAggregator(accuracy_score, ["accuracy", "label_recall"], preds, golds)
    ci = bootstrap_ci(agg, bootstrap_draws(len(golds), 500, seed=1))
    acc = float(np.mean([p == g for p, g in zip(preds, golds, strict=True)]))
    assert ci["accuracy"].value == pytest.approx(acc)
    assert ci["accuracy"].contains(acc)
    assert ci["accuracy"].high - ci["accuracy"].low > 0.05  # 60 items is noisy
    assert ci["label_recall"].contains(agg.full["label_recall"])


def test_bootstrap_interval_shrinks_with_more_items():
    small = MetricAggregator(accuracy_score, ["accuracy"], *_labels(30, 0, 0.5))
    large = MetricAggregator(accuracy_score, ["accuracy"], *_labels(1200, 0, 0.5))
    w_small = bootstrap_ci(small, bootstrap_draws(30, 400, seed=0))["accuracy"]
    w_large = bootstrap_ci(large, bootstrap_draws(1200, 400, seed=0))["accuracy"]
    assert (w_large.high - w_large.low) < (w_small.high - w_small.low) / 3


def test_bootstrap_is_deterministic_for_a_seed():
    agg = MetricAggregator(accuracy_score, ["accuracy"], *_labels(40, 3, 0.5))
    a = bootstrap_ci(agg, bootstrap_draws(40, 300, seed=7))
    b = bootstrap_ci(agg, bootstrap_draws(40, 300, seed=7))
    c = bootstrap_ci(agg, bootstrap_draws(40, 300, seed=8))
    assert a == b
    assert a != c


def test_paired_bootstrap_of_identical_methods_is_zero():
    preds, golds = _labels(50, 2, 0.5)
    a = MetricAggregator(accuracy_score, ["accuracy"], preds, golds)
    b = MetricAggregator(accuracy_score, ["accuracy"], list(preds), golds)
    d = paired_bootstrap(a, b, bootstrap_draws(50, 300, seed=0))["accuracy"]
    assert (d.diff, d.low, d.high) == (0.0, 0.0, 0.0)
    assert d.p_better == d.p_worse == 0.0
    assert d.verdict == "tie"


def test_paired_bootstrap_detects_a_consistent_improvement():
    preds, golds = _labels(80, 4, 0.4)
    better = [g if i % 2 == 0 else p for i, (p, g) in enumerate(zip(preds, golds, strict=True))]
    a = MetricAggregator(accuracy_score, ["accuracy"], better, golds)
    b = MetricAggregator(accuracy_score, ["accuracy"], preds, golds)
    d = paired_bootstrap(a, b, bootstrap_draws(80, 500, seed=0))["accuracy"]
    assert d.diff > 0 and d.low > 0
    assert d.verdict == "better"
    # Reversed, it is worse by the same amount.
    r = paired_bootstrap(b, a, bootstrap_draws(80, 500, seed=0))["accuracy"]
    assert r.diff == pytest.approx(-d.diff) and r.verdict == "worse"


def test_paired_interval_is_narrower_than_unpaired_when_items_share_difficulty():
    rng = np.random.default_rng(0)
    golds = ["1"] * 100
    hard = rng.random(100) < 0.5  # both methods fail the hard items
    a_preds = ["0" if h else "1" for h in hard]
    b_preds = ["0" if (h or i % 10 == 0) else "1" for i, h in enumerate(hard)]
    a = MetricAggregator(accuracy_score, ["accuracy"], a_preds, golds)
    b = MetricAggregator(accuracy_score, ["accuracy"], b_preds, golds)
    draws = bootstrap_draws(100, 500, seed=0)
    d = paired_bootstrap(a, b, draws)["accuracy"]
    ci_a = bootstrap_ci(a, draws)["accuracy"]
    assert (d.high - d.low) < 0.75 * (ci_a.high - ci_a.low)


def test_lower_is_better_metrics_flip_the_verdict():
    golds = ["3"] * 40
    close = ["3"] * 30 + ["4"] * 10
    far = ["1"] * 40
    a = MetricAggregator(error_score, ["mae", "rmse"], close, golds)
    b = MetricAggregator(error_score, ["mae", "rmse"], far, golds)
    d = paired_bootstrap(a, b, bootstrap_draws(40, 200, seed=0))
    assert d["mae"].diff < 0 and d["mae"].verdict == "better"
    assert d["rmse"].verdict == "better"


def test_aggregator_rmse_decomposition_matches_the_task_score():
    preds, golds = ["1", "5", "3", "2"], ["2", "3", "3", "5"]
    agg = MetricAggregator(error_score, ["mae", "rmse"], preds, golds)
    assert agg.per_item("rmse") is not None  # fast path kept: it reproduces the task's number
    idx = np.array([0, 0, 1, 3])
    expected = error_score([preds[i] for i in idx], [golds[i] for i in idx])
    assert agg.aggregate(idx) == pytest.approx(expected)


def test_aggregator_drops_a_shortcut_that_does_not_reproduce_the_score():
    def median_accuracy(preds, golds):  # named like a mean metric, but it is not one
        hits = [float(p == g) for p, g in zip(preds, golds, strict=True)]
        return {"accuracy": float(np.median(hits))}

    agg = MetricAggregator(median_accuracy, ["accuracy"], ["a", "a", "b"], ["a", "a", "a"])
    assert agg.per_item("accuracy") is None
    assert agg.aggregate(np.array([2, 2, 0]))["accuracy"] == 0.0


def test_cluster_draws_keep_whole_groups():
    groups = ["u1", "u1", "u1", "u2", "u3", "u3"]
    for draw in bootstrap_draws(6, 50, seed=0, groups=groups):
        picked = [groups[i] for i in draw]
        for g in set(picked):
            assert picked.count(g) % groups.count(g) == 0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(EvaluationError, match="no items"):
        MetricAggregator(accuracy_score, ["accuracy"], [], [])
    with pytest.raises(EvaluationError, match="2 predictions for 1"):
        MetricAggregator(accuracy_score, ["accuracy"], ["a", "b"], ["a"])
    with pytest.raises(EvaluationError, match="did not return"):
        MetricAggregator(accuracy_score, ["f1"], ["a"], ["a"])
    with pytest.raises(EvaluationError, match="zero items"):
        bootstrap_draws(0, 10)


def _items(n_users: int, per_user: int) -> list[ScoredItem]:
    items = []
    for u in range(n_users):
        for j in range(per_user):
            kind = "query" if j == 0 else "profile"
            items.append(ScoredItem(0, f"e{u}", f"r{u // 2}", f"i{j}", kind, str((u + j) % 3)))
    return items


def test_summarize_splits_query_and_all_items_and_compares_to_the_reference():
    items = _items(6, 4)
    golds = [it.gold for it in items]
    preds = {
        "mta": golds,
        "base": ["x"] * len(items),
        "retrieved": [g if i % 2 else "x" for i, g in enumerate(golds)],
    }
    query = summarize(accuracy_score, ["accuracy"], items, preds, subset="query", n_resamples=200)
    every = summarize(accuracy_score, ["accuracy"], items, preds, subset="all", n_resamples=200)
    assert (query.n_items, every.n_items) == (6, 24)
    assert query.n_users == every.n_users == 6
    assert query.reference == "mta"
    assert set(every.differences) == {"base", "retrieved"}
    assert every.methods["mta"]["accuracy"].value == 1.0
    assert every.differences["base"]["accuracy"].diff == -1.0
    assert every.differences["base"]["accuracy"].verdict == "worse"
    data = every.to_dict()
    assert data["differences"]["base"]["accuracy"]["verdict"] == "worse"
    assert set(data["methods"]["mta"]["accuracy"]) == {"value", "low", "high"}


def test_summarize_rejects_misaligned_predictions():
    items = _items(2, 2)
    with pytest.raises(EvaluationError, match="3 predictions for 4 items"):
        summarize(accuracy_score, ["accuracy"], items, {"base": ["1", "2", "3"]})


def test_fast_macro_f1_matches_the_task_metric_on_resamples():
    from mta.tasks import get_task

    task = get_task("movie_tagging")
    rng = np.random.default_rng(0)
    labels = list(task.labels)
    golds = [labels[i] for i in rng.integers(0, 5, size=40)]
    preds = [g if rng.random() < 0.5 else labels[rng.integers(0, 15)] for g in golds]
    preds[:3] = ["", "not a tag", ""]  # unparseable generations count in no class
    agg = MetricAggregator(task.score, list(task.metrics), preds, golds, task.labels)
    for idx in bootstrap_draws(40, 20, seed=3):
        expected = task.score([preds[i] for i in idx], [golds[i] for i in idx])
        assert agg.aggregate(idx) == pytest.approx(expected)
