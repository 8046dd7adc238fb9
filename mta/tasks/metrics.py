"""LaMP metrics: accuracy / macro-F1, MAE / RMSE, ROUGE-1 / ROUGE-L (as the LaMP evaluation)."""

from __future__ import annotations

import math
from collections.abc import Sequence

# Metrics where a smaller value is better (normalized names); every other metric is maximized.
LOWER_IS_BETTER = frozenset({"mae", "rmse", "mse"})


def normalize_metric(name: str) -> str:
    """Lower-case a metric name and drop separators ("ROUGE-L" -> "rougel")."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of `metric` is an improvement (MAE and RMSE are not)."""
    return normalize_metric(metric) not in LOWER_IS_BETTER


def _check_pairs(predictions: Sequence[str], golds: Sequence[str]) -> None:
    """Reject empty or mismatched prediction/gold lists."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions but {len(golds)} golds")
    if not golds:
        raise ValueError("cannot score an empty list of predictions")


def accuracy_f1(
    predictions: Sequence[str], golds: Sequence[str], labels: Sequence[str]
) -> dict[str, float]:
    """Accuracy and macro-F1 over a closed label set.

    A prediction outside `labels` (e.g. an unparseable generation, "") counts as wrong and
    belongs to no class. The macro average runs over every label, so a label that is
    neither gold nor predicted contributes 0, as in the LaMP and MTA evaluation scripts;
    compare F1 only between runs on the same items.

    Raises:
        ValueError: when a gold is not one of `labels`.
    """
    _check_pairs(predictions, golds)
    from sklearn.metrics import f1_score

    index = {label: n for n, label in enumerate(labels)}
    gold_ids = []
    for gold in golds:
        if gold not in index:
            raise ValueError(f"gold label {gold!r} is not one of: {', '.join(labels)}")
        gold_ids.append(index[gold])
    pred_ids = [index.get(prediction, -1) for prediction in predictions]
    correct = sum(p == g for p, g in zip(pred_ids, gold_ids, strict=True))
    f1 = f1_score(
        gold_ids, pred_ids, labels=list(range(len(labels))), average="macro", zero_division=0
    )
    return {"accuracy": correct / len(golds), "f1": float(f1)}


def _rating(value: str) -> float | None:
    """A prediction as a number, or None when it is not one."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def mae_rmse(predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    """Mean absolute and root-mean-square error of 1-5 ratings.

    An unparseable prediction counts as the rating farthest from the gold (1 or 5), the
    LaMP evaluation's convention, so garbage output is never rewarded.
    """
    _check_pairs(predictions, golds)
    errors = []
    for prediction, gold in zip(predictions, golds, strict=True):
        target = _rating(gold)
        if target is None:
            raise ValueError(f"gold rating {gold!r} is not a number")
        value = _rating(prediction)
        if value is None:
            value = 1.0 if abs(1.0 - target) > abs(5.0 - target) else 5.0
        errors.append(value - target)
    mae = sum(abs(e) for e in errors) / len(errors)
    rmse = math.sqrt(sum(e * e for e in errors) / len(errors))
    return {"mae": mae, "rmse": rmse}


def rouge(predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1 and ROUGE-L F-measures (rouge-score, no stemming, as LaMP's evaluate)."""
    _check_pairs(predictions, golds)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    totals = {"rouge1": 0.0, "rougeL": 0.0}
    for prediction, gold in zip(predictions, golds, strict=True):
        scores = scorer.score(gold, prediction)
        for key in totals:
            totals[key] += scores[key].fmeasure
    return {key: value / len(golds) for key, value in totals.items()}
