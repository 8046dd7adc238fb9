"""`mta eval --checkpoint`: the predictions finished so far, written after every method.

With `--resume`, a run reads the file first and reuses the methods it finished, when the
checkpoint is of the same task, seed, items and prediction-changing options; an evaluation
of a generation task takes an hour per seed on two cores, and an interrupted one should
not pay again for the methods it already finished.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mta.evaluation.options import EvalOptions
from mta.evaluation.protocol import EvalItem
from mta.evaluation.results import item_rows
from mta.evaluation.statistics import EvaluationError

# Options that do not change any method's predictions on a seed's items.
_BOOKKEEPING = frozenset(
    {"methods", "seed", "seeds", "n_resamples", "item_bootstrap", "checkpoint", "resume"}
)


def prediction_options(options: EvalOptions) -> dict[str, Any]:
    """The options a finished method's predictions depend on, as JSON values."""
    return {k: v for k, v in options.as_json().items() if k not in _BOOKKEEPING}


def write_checkpoint(
    path: Path,
    options: EvalOptions,
    task: str,
    seed: int,
    items: Sequence[EvalItem],
    preds: Mapping[str, list[str]],
    timings: Mapping[str, float],
) -> None:
    """Write the predictions finished so far (one seed) atomically, for interrupted runs."""
    done = {m: p for m, p in preds.items() if len(p) == len(items)}
    doc = {
        "partial": True,
        "task": task,
        "seed": seed,
        "options": prediction_options(options),
        "methods_done": list(done),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "items": item_rows([it.item for it in items], done),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(path)


def resumed_predictions(
    path: Path, options: EvalOptions, task: str, seed: int, items: Sequence[EvalItem]
) -> dict[str, list[str]]:
    """The finished methods' predictions in ``path``, or EvaluationError if they do not fit.

    A missing file resumes nothing. A checkpoint of another task or seed, of other items,
    or written with other prediction options is refused rather than silently mixed in.
    A checkpoint written before options were recorded is trusted on its items alone.
    """
    path = Path(path)
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise EvaluationError(f"--resume: cannot read {path}: {error}") from error
    if doc.get("task") != task or doc.get("seed") != seed:
        raise EvaluationError(
            f"--resume: {path} is task {doc.get('task')} seed {doc.get('seed')}, "
            f"this run is task {task} seed {seed}"
        )
    _check_options(path, doc.get("options"), prediction_options(options))
    rows = doc.get("items") or []
    if [_key(r) for r in rows] != [_key(asdict(it.item)) for it in items]:
        raise EvaluationError(f"--resume: {path} holds other items than this split's")
    return {m: [r["predictions"][m] for r in rows] for m in doc.get("methods_done", [])}


def _check_options(path: Path, saved: Any, current: dict[str, Any]) -> None:
    """Refuse a checkpoint whose recorded prediction options differ from this run's."""
    if saved is None:
        return
    differing = sorted(k for k in current.keys() | saved.keys() if saved.get(k) != current.get(k))
    if differing:
        raise EvaluationError(
            f"--resume: {path} was written with other options ({', '.join(differing)})"
        )


def _key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """What identifies a scored item across runs of the same split."""
    return (row["user_id"], row["item_id"], row["kind"], row["gold"])
