"""`mta eval` end to end: per seed, split, build the bank, predict with every method.

Per seed the users are split by real user into an anchor pool and test users (or the
pool is --data and the test users are --test-data); every method predicts every scored
item on the same base model and the same prompts. Statistics are `mta.evaluation.summary`'s;
this module produces predictions and the result document, recorded as an eval run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mta.evaluation.checkpoint import resumed_predictions, write_checkpoint
from mta.evaluation.methods import execution_order, get_method, parse_methods
from mta.evaluation.options import HISTORY_K, EvalOptions
from mta.evaluation.predictor import Predictor
from mta.evaluation.protocol import Split, build_entries, split_given, split_users
from mta.evaluation.results import item_rows, summarize_predictions
from mta.evaluation.seed_run import SeedRun
from mta.evaluation.seed_state import LogFn, Timer
from mta.evaluation.statistics import EvaluationError
from mta.evaluation.summary import ScoredItem
from mta.progress import ProgressFn
from mta.registry.context import RegistryContext


@dataclass
class _Run:
    """One evaluation: what every seed shares, and every seed's items and predictions pooled."""

    options: EvalOptions
    ctx: RegistryContext
    task: Any
    methods: list[str]
    report: ProgressFn
    say: LogFn
    predictor: Predictor | None = None
    items: list[ScoredItem] = field(default_factory=list)
    predictions: dict[str, list[str]] = field(default_factory=dict)
    splits: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def run_eval(
    options: EvalOptions,
    ctx: RegistryContext,
    *,
    registry_label: str = "",
    progress: ProgressFn | None = None,
    log: LogFn | None = None,
) -> dict[str, Any]:
    """Run the evaluation and return the result document (also recorded as an eval run).

    Args:
        options: what to evaluate.
        ctx: an initialized registry; banks, users and the eval run are written there
            (test users are deleted again at the end).
        registry_label: how the registry is described in the result.
        progress: ``(stage, done, total)`` callback.
        log: one-line messages for people (stderr).

    Returns:
        The JSON-ready result: config, split sizes, per-subset summaries, every item with
        every method's prediction, wall times, and ``eval_run_id``.
    """
    from mta.evaluation.data import load_test_users, resolve_data_path
    from mta.lamp_data import load_users
    from mta.tasks import get_task

    options.validate()
    say = log or (lambda _msg: None)
    task = get_task(options.task)
    if options.decode == "rank" and not task.labels:
        raise EvaluationError(
            f"--decode rank needs a classification task; {task.name} generates text"
        )
    methods, skipped = parse_methods(options.methods, task.name)
    for name in skipped:
        say(f"skipping {name}: it applies only to classification tasks")
    data_path = resolve_data_path(task.name, options.data)
    users = load_users(data_path, task=task)
    test_users = None
    if options.test_data is not None:
        test_users = load_test_users(options.test_data, users, data_path, task)
    started = time.monotonic()
    ctx.device = options.device  # the bank and the registry-trained stacks run there too
    run = _Run(options, ctx, task, methods, progress or (lambda _s, _d, _t: None), say)
    run.predictions = {m: [] for m in methods}
    if any(get_method(m).uses_model for m in methods):
        run.predictor = Predictor(task, options)
    for seed in range(options.seed, options.seed + options.seeds):
        if test_users is None:
            split = split_users(
                users, seed=seed, test_fraction=options.test_fraction, limit=options.limit
            )
        else:
            split = split_given(users, test_users, seed=seed, limit=options.limit)
        _collect_seed(run, split)
    config = options.as_json()
    config["data"] = str(data_path)
    config["methods"] = methods
    return _document(run, config, skipped, registry_label, started)


def _collect_seed(run: _Run, split: Split) -> None:
    """Predict one seed's items with every method and pool them into ``run``."""
    entries = build_entries(run.task, split, shots=run.options.shots, history_k=HISTORY_K)
    seed_run = SeedRun(
        run.options, run.ctx, run.task, split, entries, run.predictor, run.timings,
        run.report, run.say, run.notes, info=_split_info(split, entries),
    )  # fmt: skip
    preds = _run_seed(seed_run, run.methods)
    run.splits.append(seed_run.info)
    run.items.extend(it.item for it in seed_run.items)
    for m in run.methods:
        run.predictions[m].extend(preds[m])


def _document(
    run: _Run, config: dict[str, Any], skipped: list[str], registry_label: str, started: float
) -> dict[str, Any]:
    """Summarize every subset, record the eval run, and return the result document."""
    from mta.registry.service import record_eval_run

    task, methods = run.task, run.methods
    with Timer(run.timings, "bootstrap"):
        stats = summarize_predictions(
            task,
            methods,
            run.items,
            run.predictions,
            n_resamples=run.options.n_resamples,
            seed=run.options.seed,
            item_bootstrap=run.options.item_bootstrap,
        )
    run.timings["total"] = time.monotonic() - started
    timings = {k: round(v, 2) for k, v in run.timings.items()}
    subsets = stats["subsets"]
    summary = {
        "subsets": subsets,
        "per_user": stats["per_user"],
        "splits": run.splits,
        "timings_s": timings,
    }
    run_id = record_eval_run(run.ctx, task=task.name, config=config, results=summary)
    return {
        "config": config,
        "task": task.name,
        "lamp_id": task.lamp_id,
        "metrics": list(task.metrics),
        "methods": methods,
        "skipped_methods": skipped,
        "reference": stats["reference"],
        "registry": registry_label,
        "splits": run.splits,
        "subsets": subsets,
        "per_user": stats["per_user"],
        "notes": run.notes,
        "timings_s": timings,
        "items": item_rows(run.items, {m: run.predictions[m] for m in methods}),
        "eval_run_id": run_id,
    }


def _split_info(split: Split, entries: Sequence[Any]) -> dict[str, Any]:
    """The seed's entry in the result's "splits" (the bank adds its version and anchors)."""
    items = [it for e in entries for it in e.items]
    return {
        "seed": split.seed,
        "pool_users": split.n_pool_groups,
        "test_users": split.n_test_groups,
        "test_entries": len(entries),
        "query_items": sum(it.item.kind == "query" for it in items),
        "profile_items": sum(it.item.kind == "profile" for it in items),
    }


def _run_seed(run: SeedRun, methods: Sequence[str]) -> dict[str, list[str]]:
    """Every method's predictions on one seed's items, checkpointed after each method."""
    split, items = run.split, run.items
    run.say(
        f"seed {run.seed}: {split.n_pool_groups} pool users, {split.n_test_groups} test users "
        f"({len(run.entries)} entries, {len(items)} scored items)"
    )
    preds = _resumed(run, methods)
    try:
        for name in execution_order(methods):
            if name in preds:
                continue
            preds[name] = get_method(name).predict(run)
            if len(preds[name]) != len(items):
                raise RuntimeError(f"{name}: {len(preds[name])} predictions for {len(items)}")
            if run.options.checkpoint is not None:
                write_checkpoint(
                    run.options.checkpoint, run.options, run.task.name, run.seed, items,
                    preds, run.timings,
                )  # fmt: skip
    finally:
        run.close()
    return {m: preds[m] for m in methods}


def _resumed(run: SeedRun, methods: Sequence[str]) -> dict[str, list[str]]:
    """The requested methods that --resume takes from the checkpoint (none without it)."""
    if not run.options.resume or run.options.checkpoint is None:
        return {}
    found = resumed_predictions(
        run.options.checkpoint, run.options, run.task.name, run.seed, run.items
    )
    kept = {m: p for m, p in found.items() if m in methods}
    if kept:
        run.say(f"seed {run.seed}: resumed {', '.join(kept)} from {run.options.checkpoint}")
    return kept
