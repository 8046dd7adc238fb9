"""Per-real-user view of an evaluation: each method's score per test user, and a gain per user.

A pooled mean can come from one user. This breaks the scored items down by real user
(entries of one LaMP user and every seed pooled) so a reader sees how many users a
method's lead rests on. Method-free, like `mta.evaluation.summary`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mta.evaluation.statistics import EvaluationError, ScoreFn
from mta.evaluation.summary import SUBSETS, ScoredItem
from mta.tasks.metrics import higher_is_better

# A per-user gain within this of zero counts as a tie (scores are means of a few items).
TIE_TOLERANCE = 1e-9


def per_user_breakdown(
    score: ScoreFn,
    metrics: Sequence[str],
    items: Sequence[ScoredItem],
    predictions: Mapping[str, Sequence[str]],
    *,
    subset: str = "all",
    gain_of: str | None = None,
    over: str | None = None,
) -> dict:
    """Each method's metrics per real test user, and ``gain_of − over`` per user.

    Args:
        score: the task's score function.
        metrics: metric names in display order; the first is the one gains are counted on.
        items: every scored item (all subsets).
        predictions: method -> predictions aligned with ``items``.
        subset: "query" or "all", as in `mta.evaluation.summary.summarize`.
        gain_of: the method whose gain is reported (e.g. "mta"); None for no gains.
        over: the method it is compared with (e.g. "base").

    Returns:
        A JSON-ready dict: ``subset``, ``metrics``, ``gain_of``, ``over``, ``users`` (one
        row per real user, in first-seen order: ``user``, ``entries``, ``n_items``,
        ``scores`` method -> metric -> value, ``gain`` metric -> value or None), and
        ``gain_counts`` (users where ``gain_of`` is better than, equal to or worse than
        ``over`` on the first metric, in the metric's own direction), and ``versus``:
        the same counts for every other method against ``over`` (e.g. how many users
        fusion alone leaves worse off than the base model).
    """
    if subset not in SUBSETS:
        raise EvaluationError(f"unknown subset {subset!r}; valid: {', '.join(SUBSETS)}")
    compare = gain_of is not None and over is not None
    for name in (gain_of, over) if compare else ():
        if name not in predictions:
            raise EvaluationError(f"method {name!r} was not evaluated")
    rows_by_user: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        if subset == "all" or it.kind == "query":
            rows_by_user.setdefault(it.group, []).append(i)
    pair = (gain_of, over) if compare else None
    users = [
        _user_row(score, metrics, items, predictions, user, rows, pair)
        for user, rows in rows_by_user.items()
    ]
    return {
        "subset": subset,
        "metrics": list(metrics),
        "gain_of": gain_of if compare else None,
        "over": over if compare else None,
        "users": users,
        "gain_counts": _gain_counts(users, metrics[0]) if compare else None,
        "versus": _versus(users, metrics[0], over) if over in predictions else None,
    }


def _user_row(
    score: ScoreFn,
    metrics: Sequence[str],
    items: Sequence[ScoredItem],
    predictions: Mapping[str, Sequence[str]],
    user: str,
    rows: list[int],
    pair: tuple[str, str] | None,
) -> dict:
    """One real user's scores per method, and the gain when a pair of methods is given."""
    golds = [items[i].gold for i in rows]
    scores = {
        method: _metrics(score, metrics, [preds[i] for i in rows], golds)
        for method, preds in predictions.items()
    }
    gain = None
    if pair is not None:
        gain = {m: scores[pair[0]][m] - scores[pair[1]][m] for m in metrics}
    return {
        "user": user,
        "entries": len({(items[i].seed, items[i].user_id) for i in rows}),
        "n_items": len(rows),
        "scores": scores,
        "gain": gain,
    }


def _metrics(
    score: ScoreFn, metrics: Sequence[str], preds: Sequence[str], golds: Sequence[str]
) -> dict[str, float]:
    """The task's metrics on one user's items, in ``metrics`` order."""
    values = score(list(preds), list(golds))
    return {m: float(values[m]) for m in metrics}


def _versus(users: Sequence[dict], metric: str, over: str | None) -> dict[str, dict[str, int]]:
    """For each method but `over`: users it is better, equal or worse for than `over`."""
    methods = [m for m in users[0]["scores"] if m != over] if users else []
    return {
        method: _gain_counts(
            [
                {"gain": {metric: u["scores"][method][metric] - u["scores"][over][metric]}}
                for u in users
            ],
            metric,
        )
        for method in methods
    }


def _gain_counts(users: Sequence[dict], metric: str) -> dict[str, int]:
    """How many users gain, tie and lose on ``metric`` (a lower error is a gain)."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    gains = [sign * u["gain"][metric] for u in users]
    return {
        "better": sum(g > TIE_TOLERANCE for g in gains),
        "tie": sum(abs(g) <= TIE_TOLERANCE for g in gains),
        "worse": sum(g < -TIE_TOLERANCE for g in gains),
    }
