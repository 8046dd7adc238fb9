"""A result document's statistics from its items and predictions, and pooling saved results.

`mta eval` summarizes its own predictions at the end of a run; `mta eval-report` loads
saved results (or `--checkpoint` files), pools their seeds and summarizes again, so seeds
run as separate processes, or on separate machines, give the same tables as `--seeds N`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mta.evaluation.methods import reference_method
from mta.evaluation.per_user import per_user_breakdown
from mta.evaluation.statistics import EvaluationError
from mta.evaluation.summary import SUBSETS, ScoredItem, summarize

_ITEM_FIELDS = ("seed", "user_id", "group", "item_id", "kind", "gold")


def summarize_predictions(
    task: Any,
    methods: Sequence[str],
    items: Sequence[ScoredItem],
    predictions: Mapping[str, Sequence[str]],
    *,
    n_resamples: int,
    seed: int,
    item_bootstrap: bool,
) -> dict[str, Any]:
    """The ``reference``, per-subset ``subsets`` and ``per_user`` parts of a result document."""
    reference = reference_method(methods)
    subsets = {
        subset: summarize(
            task.score,
            list(task.metrics),
            items,
            predictions,
            subset=subset,
            reference=reference,
            n_resamples=n_resamples,
            seed=seed,
            cluster_by_user=not item_bootstrap,
            labels=task.labels,
        ).to_dict()
        for subset in SUBSETS
    }
    gain_of, over = gain_pair(methods)
    per_user = per_user_breakdown(
        task.score, list(task.metrics), items, predictions, gain_of=gain_of, over=over
    )
    return {"reference": reference, "subsets": subsets, "per_user": per_user}


def item_rows(
    items: Sequence[ScoredItem], predictions: Mapping[str, Sequence[str]]
) -> list[dict[str, Any]]:
    """Items as a result file holds them: each item's fields and every method's prediction."""
    return [
        {**asdict(it), "predictions": {m: preds[i] for m, preds in predictions.items()}}
        for i, it in enumerate(items)
    ]


def gain_pair(methods: Sequence[str]) -> tuple[str | None, str | None]:
    """Whose per-user gain over whom is reported: the reference over `base`, when both ran."""
    reference = reference_method(methods)
    if "base" in methods and reference != "base":
        return reference, "base"
    return None, None


@dataclass
class PooledResults:
    """The items and predictions of several saved results, seeds pooled in file order."""

    task: Any  # the task object (`mta.tasks.get_task`)
    methods: list[str]
    items: list[ScoredItem] = field(default_factory=list)
    predictions: dict[str, list[str]] = field(default_factory=dict)
    splits: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # methods missing from some file


def load_result(path: Path) -> dict[str, Any]:
    """A saved `mta eval` result or checkpoint, or EvaluationError naming the file."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EvaluationError(f"{path}: not a readable result file ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list) or "task" not in doc:
        raise EvaluationError(f"{path}: not an `mta eval` result (no task or items)")
    return doc


def pool_results(paths: Sequence[Path]) -> PooledResults:
    """Pool the seeds of saved results of one task; every seed may appear in one file only.

    Methods not in every file are dropped (``dropped`` lists them), so a checkpoint of an
    interrupted run pools with the methods it finished.
    """
    from mta.tasks import get_task

    docs = [(Path(p), load_result(p)) for p in paths]
    name = docs[0][1]["task"]
    for path, doc in docs:
        if doc["task"] != name:
            raise EvaluationError(f"{path}: task {doc['task']} differs from {name}")
    task = get_task(str(name))
    methods, dropped = _common_methods([doc for _, doc in docs])
    pooled = PooledResults(task=task, methods=methods, dropped=dropped)
    pooled.predictions = {m: [] for m in methods}
    pooled.config = dict(docs[0][1].get("config", {}))
    seen: dict[int, Path] = {}
    for path, doc in docs:
        start = len(pooled.items)
        _add_items(pooled, path, doc)  # validates every item first
        for seed in sorted({it.seed for it in pooled.items[start:]}):
            if seed in seen:
                raise EvaluationError(f"seed {seed} is in both {seen[seed]} and {path}")
            seen[seed] = path
        pooled.splits.extend(doc.get("splits", []))
    if not pooled.items:
        raise EvaluationError("the result files hold no scored items")
    pooled.config["seeds_pooled"] = sorted(seen)
    pooled.config["pooled_from"] = [str(p) for p, _ in docs]
    return pooled


def _common_methods(docs: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Methods every document predicted (in the first one's order), and those dropped."""
    listed = [doc.get("methods") or doc.get("methods_done") or [] for doc in docs]
    union = list(dict.fromkeys(m for names in listed for m in names))
    common = [m for m in union if all(m in names for names in listed)]
    if not common:
        raise EvaluationError("the result files have no method in common")
    return common, [m for m in union if m not in common]


def _add_items(pooled: PooledResults, path: Path, doc: dict[str, Any]) -> None:
    """Append one document's items and the pooled methods' predictions."""
    labels = pooled.task.labels
    for n, raw in enumerate(doc["items"]):
        try:
            item = ScoredItem(**{k: raw[k] for k in _ITEM_FIELDS})
            for m in pooled.methods:
                pooled.predictions[m].append(str(raw["predictions"][m]))
        except (KeyError, TypeError):
            raise EvaluationError(f"{path}: item {n} lacks a field or a prediction") from None
        if labels and item.gold not in labels:
            raise EvaluationError(
                f"{path}: item {n} has gold {item.gold!r}, not a label of the task"
            )
        pooled.items.append(item)
