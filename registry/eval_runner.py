"""`mta eval`: the LaMP protocol run end to end through the registry service.

Per seed: split the users by *real* user into an anchor pool and test users, build the
bank from the pool through the registry, then predict every scored item with every
method on the same base model and the same prompts. Scored items are each test entry's
query and, when ``shots`` is below the profile length, the profile items not used as
shots (their history retrieved from the user's other items). Statistics live in
`mta.evaluation`; this module only produces predictions and the result document.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mta.errors import MtaError
from mta.evaluation import (
    METHODS,
    SUBSETS,
    EvaluationError,
    ScoredItem,
    majority_label,
    parse_methods,
    reference_method,
    summarize,
)
from mta.registry.context import MODEL_LOCK, RegistryContext

ProgressFn = Callable[[str, int, int], None]
LogFn = Callable[[str], None]

# Where `mta eval` looks for data after --data and $MTA_LAMP_DIR: the shared folder next
# to the repository checkout (development machines).
_DEV_LAMP_DIR = Path(__file__).resolve().parents[2] / "shared" / "lamp"
# Baselines trained from scratch use the meta-LoRA rank, as the paper's OPPU.
BASELINE_RANK = 8
# History items retrieved into every prompt (the paper's top-1), as the registry trains with.
HISTORY_K = 1
EVAL_USER_PREFIX = "eval"


@dataclass
class EvalOptions:
    """Everything `mta eval` can be told; defaults match the command's."""

    task: str
    data: Path | None = None
    methods: str | None = None
    anchors: int = 4
    top_k: int = 2
    shots: int = 5
    stack_rank: int = 1
    fusion: str = "cat"
    weight_rule: str = "proportional"
    seed: int = 0
    seeds: int = 1
    limit: int | None = None
    test_fraction: float = 0.5
    epochs: int = 1
    lr: float = 2e-4
    user_epochs: int = 3
    user_lr: float = 1e-3
    max_steps: int | None = None
    min_history: int = 8
    anchor_data: str = "user"
    base_model: str | None = None
    embedder: str | None = None
    max_new_tokens: int | None = None
    batch_size: int = 8
    n_resamples: int = 1000
    cluster_bootstrap: bool = False
    # Written after every finished method: predictions so far, for runs that may not finish.
    checkpoint: Path | None = None

    def validate(self) -> None:
        """Raise EvaluationError with a one-line message for an out-of-range option."""
        positive = {
            "anchors": self.anchors,
            "top-k": self.top_k,
            "shots": self.shots,
            "stack-rank": self.stack_rank,
            "seeds": self.seeds,
            "epochs": self.epochs,
            "user-epochs": self.user_epochs,
            "batch-size": self.batch_size,
            "resamples": self.n_resamples,
        }
        for name, value in positive.items():
            if value < 1:
                raise EvaluationError(f"--{name} must be at least 1, got {value}")
        if self.limit is not None and self.limit < 1:
            raise EvaluationError(f"--limit must be at least 1, got {self.limit}")
        if self.max_steps is not None and self.max_steps < 1:
            raise EvaluationError(f"--max-steps must be at least 1, got {self.max_steps}")
        if not 0.0 < self.test_fraction < 1.0:
            raise EvaluationError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")


def resolve_data_path(task: str, data: Path | None) -> Path:
    """The users file: --data, else $MTA_LAMP_DIR/<task>/users.json, else ../shared/lamp.

    Raises:
        EvaluationError: none of them exists.
    """
    from mta.lamp_data import USERS_FILE, find_task_data

    if data is not None:
        if not Path(data).is_file():
            raise EvaluationError(f"--data {data}: no such file")
        return Path(data)
    found = find_task_data(task)
    if found is not None:
        return found
    dev = _DEV_LAMP_DIR / task / USERS_FILE
    if dev.is_file():
        return dev
    raise EvaluationError(
        f"no data for task {task!r}: pass --data FILE, set MTA_LAMP_DIR, "
        f"or run `mta data fetch --task {task}`"
    )


@dataclass
class Split:
    """One seed's split of the users file into an anchor pool and test entries."""

    seed: int
    pool: list[dict]  # one entry per real pool user (anchor candidates)
    test: list[dict]  # every entry of the test users, interleaved across users, capped
    group_of: dict[str, str]  # test entry id -> real-user label
    n_pool_groups: int
    n_test_groups: int


def split_users(
    users: Sequence[dict], *, seed: int, test_fraction: float, limit: int | None
) -> Split:
    """Split by real user (seeded): pool users give one entry each, test users all entries.

    Args:
        users: per-user records (entries).
        seed: shuffle seed.
        test_fraction: share of real users held out for testing.
        limit: cap on test entries; picked round-robin across test users so a cap keeps
            as many distinct real users as possible.

    Returns:
        The split.

    Raises:
        EvaluationError: fewer than two real users.
    """
    from mta.lamp_data import group_real_users

    groups = group_real_users(users)
    if len(groups) < 2:
        raise EvaluationError(
            f"need at least 2 real users to split into pool and test, found {len(groups)}"
        )
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    n_test = min(len(groups) - 1, max(1, round(len(groups) * test_fraction)))
    test_groups = [groups[g] for g in order[:n_test]]
    pool_groups = [groups[g] for g in order[n_test:]]
    pool = [users[g[0]] for g in pool_groups]
    test: list[dict] = []
    group_of: dict[str, str] = {}
    for rnd in range(max(len(g) for g in test_groups)):
        for g in test_groups:
            if rnd < len(g):
                entry = users[g[rnd]]
                test.append(entry)
                group_of[str(entry["user_id"])] = str(users[g[0]]["user_id"])
    if limit is not None:
        test = test[:limit]
    return Split(seed, pool, test, group_of, len(pool_groups), len(test_groups))


@dataclass
class _Item:
    """A scored item of one test entry, with the prompt every model method gets."""

    item: ScoredItem
    query_input: str
    prompt: str
    history: list[dict]


@dataclass
class _Entry:
    """A test entry in the middle of an evaluation."""

    entry: dict
    shot_indices: list[int]
    items: list[_Item] = field(default_factory=list)


def build_items(
    task: Any, entry: dict, *, seed: int, group: str, shots: Sequence[int], history_k: int
) -> list[_Item]:
    """The entry's query item(s), plus its non-shot profile items as extra scored items."""
    from mta.tasks import query_example, retrieve_history

    user_id = str(entry["user_id"])
    out = []
    for query in entry["query"]:
        prompt, gold = query_example(task, entry, query, k=history_k)
        history = retrieve_history(
            task, entry["profile"], query["input"], max(history_k, 1), exclude_id=str(query["id"])
        )
        item = ScoredItem(seed, user_id, group, str(query["id"]), "query", gold)
        out.append(_Item(item, query["input"], prompt, history))
    prepared = task.prepare_profile(entry["profile"])
    for index, target in enumerate(prepared):
        if index in shots or not task.is_target(target):
            continue
        query_input = task.item_input(target)
        others = [other for n, other in enumerate(prepared) if n != index]
        history = retrieve_history(task, others, query_input, max(history_k, 1))
        prompt = task.prompt(query_input, history[:history_k])
        item_id = str(target.get("id", index))
        gold = task.item_target(target)
        out.append(
            _Item(
                ScoredItem(seed, user_id, group, item_id, "profile", gold),
                query_input,
                prompt,
                history,
            )
        )
    return out


def shot_examples(task: Any, profile: Sequence[dict], shots: Sequence[int], k: int) -> list:
    """Leave-one-out (prompt, target) examples over the shot items only."""
    from mta.tasks import profile_examples

    return profile_examples(task, [profile[i] for i in shots], k=k)


class _Predictor:
    """Generates and parses predictions with the shared base model."""

    def __init__(self, task: Any, options: EvalOptions) -> None:
        from mta.base_model import load_base_model

        self.task = task
        self.options = options
        self.model, self.tokenizer = load_base_model(options.base_model)
        self.max_new_tokens = options.max_new_tokens or (8 if task.labels else 24)

    def predict(
        self,
        items: Sequence[_Item],
        adapter: Any = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[str]:
        """Parsed predictions of the base model, with ``adapter`` merged in memory if given.

        ``progress(done, total)`` is called after every generation batch.
        """
        from contextlib import nullcontext

        from mta.training import apply_adapter, generate

        prompts = [it.prompt for it in items]
        texts: list[str] = []
        size = self.options.batch_size
        with MODEL_LOCK:
            merged = apply_adapter(self.model, adapter) if adapter is not None else nullcontext()
            with merged:
                for start in range(0, len(prompts), size):
                    texts.extend(
                        generate(
                            self.model,
                            self.tokenizer,
                            prompts[start : start + size],
                            max_new_tokens=self.max_new_tokens,
                            batch_size=size,
                        )
                    )
                    if progress is not None:
                        progress(len(texts), len(prompts))
        return [self.task.parse(t, it.query_input) for t, it in zip(texts, items, strict=True)]

    def train(self, examples: Sequence, *, rank: int, epochs: int, lr: float, seed: int) -> Any:
        """A LoRA trained from scratch on ``examples`` (task-lora and OPPU baselines)."""
        from mta.training import TrainConfig, train_lora

        config = TrainConfig(
            rank=rank, epochs=epochs, lr=lr, seed=seed, max_steps=self.options.max_steps
        )
        with MODEL_LOCK:
            adapter, _ = train_lora(self.model, self.tokenizer, examples, config, progress=False)
        return adapter


@contextmanager
def eval_registry(
    db_url: str | None, store_url: str | None, workdir: Path | None
) -> Iterator[tuple[RegistryContext, str]]:
    """The registry the evaluation writes to, and how to describe it.

    With ``db_url``/``store_url`` that registry is used (it must be initialized). Otherwise
    a private one is created under ``workdir`` (kept) or a temporary folder (removed).
    """
    from mta.registry.service import init_registry

    if db_url or store_url:
        ctx = RegistryContext.open(db_url, store_url)
        try:
            yield ctx, ctx.db_url
        finally:
            ctx.close()
        return
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mta-eval-"))
    root.mkdir(parents=True, exist_ok=True)
    ctx = RegistryContext.open(
        f"sqlite:///{root / 'registry.db'}", f"file://{root / 'store'}", root / "cache"
    )
    try:
        init_registry(ctx)
        yield ctx, (f"private registry kept at {root}" if workdir else "private (discarded)")
    finally:
        ctx.close()
        if not workdir:
            shutil.rmtree(root, ignore_errors=True)


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
    from mta.lamp_data import load_users
    from mta.tasks import get_task

    options.validate()
    say = log or (lambda _msg: None)
    report = progress or (lambda _s, _d, _t: None)
    task = get_task(options.task)
    methods, skipped = parse_methods(options.methods, task.name)
    for name in skipped:
        say(f"skipping {name}: it applies only to classification tasks")
    data_path = resolve_data_path(task.name, options.data)
    users = load_users(data_path, task=task)
    started = time.monotonic()
    timings: dict[str, float] = {}
    all_items: list[ScoredItem] = []
    predictions: dict[str, list[str]] = {m: [] for m in methods}
    splits_info = []
    notes: list[str] = []
    predictor = _Predictor(task, options) if any(METHODS[m].uses_model for m in methods) else None
    for seed in range(options.seed, options.seed + options.seeds):
        split = split_users(
            users, seed=seed, test_fraction=options.test_fraction, limit=options.limit
        )
        info, items, preds = _run_seed(
            options, ctx, task, methods, split, predictor, timings, report, say, notes
        )
        splits_info.append(info)
        all_items.extend(items)
        for m in methods:
            predictions[m].extend(preds[m])
    reference = reference_method(methods)
    t0 = time.monotonic()
    subsets = {}
    for subset in SUBSETS:
        subsets[subset] = summarize(
            task.score,
            list(task.metrics),
            all_items,
            predictions,
            subset=subset,
            reference=reference,
            n_resamples=options.n_resamples,
            seed=options.seed,
            cluster_by_user=options.cluster_bootstrap,
            labels=task.labels,
        ).to_dict()
    timings["bootstrap"] = time.monotonic() - t0
    timings["total"] = time.monotonic() - started
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}
    config["data"] = str(data_path)
    config["methods"] = methods
    results = {
        "task": task.name,
        "lamp_id": task.lamp_id,
        "metrics": list(task.metrics),
        "methods": methods,
        "skipped_methods": skipped,
        "reference": reference,
        "registry": registry_label,
        "splits": splits_info,
        "subsets": subsets,
        "notes": notes,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "items": [
            {**asdict(it), "predictions": {m: predictions[m][i] for m in methods}}
            for i, it in enumerate(all_items)
        ],
    }
    from mta.registry.service import record_eval_run

    summary = {"subsets": subsets, "splits": splits_info, "timings_s": results["timings_s"]}
    results["eval_run_id"] = record_eval_run(ctx, task=task.name, config=config, results=summary)
    results = {"config": config, **results}
    return results


def _run_seed(
    options: EvalOptions,
    ctx: RegistryContext,
    task: Any,
    methods: list[str],
    split: Split,
    predictor: _Predictor | None,
    timings: dict[str, float],
    report: ProgressFn,
    say: LogFn,
    notes: list[str],
) -> tuple[dict, list[ScoredItem], dict[str, list[str]]]:
    """Evaluate one seed's split; returns (split info, items, predictions per method)."""
    from mta.registry.service import shot_indices

    seed = split.seed
    entries = []

    for entry in split.test:
        # The registry picks a stack's shots this way; OPPU and user-majority use the same.
        shots = shot_indices(len(entry["profile"]), options.shots, seed)
        group = split.group_of[str(entry["user_id"])]
        entry_items = build_items(
            task, entry, seed=seed, group=group, shots=shots, history_k=HISTORY_K
        )
        entries.append(_Entry(entry, shots, entry_items))
    items = [it for e in entries for it in e.items]
    info = {
        "seed": seed,
        "pool_users": split.n_pool_groups,
        "test_users": split.n_test_groups,
        "test_entries": len(entries),
        "query_items": sum(it.item.kind == "query" for it in items),
        "profile_items": sum(it.item.kind == "profile" for it in items),
    }
    say(
        f"seed {seed}: {split.n_pool_groups} pool users, {split.n_test_groups} test users "
        f"({len(entries)} entries, {len(items)} scored items)"
    )
    preds: dict[str, list[str]] = {}

    def timed(name: str) -> _Timer:
        return _Timer(timings, name)

    def save() -> None:
        if options.checkpoint is not None:
            _write_checkpoint(options.checkpoint, task.name, seed, items, preds, timings)

    if "retrieved" in methods:
        preds["retrieved"] = [task.answer_from_history(it.query_input, it.history) for it in items]
        save()
    if "user-majority" in methods:
        preds["user-majority"] = []
        for e in entries:
            prepared = task.prepare_profile(e.entry["profile"])
            label = majority_label([task.item_target(prepared[i]) for i in e.shot_indices])
            preds["user-majority"].extend([label] * len(e.items))
        save()
    if "base" in methods:
        with timed("base"):
            preds["base"] = predictor.predict(
                items, progress=lambda done, total: report("base", done, total)
            )
        save()
    if "task-lora" in methods:
        with timed("task-lora"):
            from mta.tasks import profile_examples

            examples = [
                ex for u in split.pool for ex in profile_examples(task, u["profile"], k=HISTORY_K)
            ]
            report("task-lora train", 0, 1)
            adapter = predictor.train(
                examples, rank=BASELINE_RANK, epochs=options.epochs, lr=options.lr, seed=seed
            )
            report("task-lora train", 1, 1)
            preds["task-lora"] = predictor.predict(
                items, adapter, progress=lambda done, total: report("task-lora", done, total)
            )
        save()
    if "oppu" in methods:
        with timed("oppu"):
            preds["oppu"] = []
            for n, e in enumerate(entries):
                examples = shot_examples(task, e.entry["profile"], e.shot_indices, HISTORY_K)
                adapter = predictor.train(
                    examples,
                    rank=BASELINE_RANK,
                    epochs=options.user_epochs,
                    lr=options.user_lr,
                    seed=seed,
                )
                preds["oppu"].extend(predictor.predict(e.items, adapter))
                report("oppu", n + 1, len(entries))
        save()
    bank_methods = [m for m in methods if METHODS[m].needs_bank]
    if bank_methods:
        bank = _build_bank(options, ctx, task, split, timings, report, say, notes)
        info["bank_version"] = bank.version
        info["anchors"] = bank.num_anchors
        mta_preds = _bank_methods(
            options, ctx, bank, seed, entries, bank_methods, predictor, timings, report
        )
        preds.update(mta_preds)
        save()
    return info, [it.item for it in items], {m: preds[m] for m in methods}


def _write_checkpoint(
    path: Path,
    task: str,
    seed: int,
    items: Sequence[_Item],
    preds: dict[str, list[str]],
    timings: dict[str, float],
) -> None:
    """Write the predictions finished so far (one seed) atomically, for interrupted runs."""
    done = {m: p for m, p in preds.items() if len(p) == len(items)}
    doc = {
        "partial": True,
        "task": task,
        "seed": seed,
        "methods_done": list(done),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "items": [
            {**asdict(it.item), "predictions": {m: p[i] for m, p in done.items()}}
            for i, it in enumerate(items)
        ],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(path)


class _Timer:
    """Adds the wall time of a block to ``timings[name]``."""

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.t0 = time.monotonic()

    def __exit__(self, *_exc: object) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.monotonic() - self.t0


def _build_bank(
    options: EvalOptions,
    ctx: RegistryContext,
    task: Any,
    split: Split,
    timings: dict[str, float],
    report: ProgressFn,
    say: LogFn,
    notes: list[str],
) -> Any:
    """Publish a bank built from the pool users (one entry each) through the registry."""
    from mta.registry.service import build_bank

    eligible = sum(len(u["profile"]) >= options.min_history for u in split.pool)
    anchors = options.anchors
    if anchors > eligible:
        if eligible == 0:
            raise EvaluationError(
                f"no pool user has --min-history {options.min_history} profile items"
            )
        note = f"seed {split.seed}: --anchors {anchors} lowered to {eligible} (eligible pool users)"
        say(note)
        notes.append(note)
        anchors = eligible
    with tempfile.TemporaryDirectory(prefix="mta-eval-pool-") as tmp:
        pool_path = Path(tmp) / "pool.json"
        pool_path.write_text(json.dumps(split.pool, ensure_ascii=False))
        with _Timer(timings, "bank"):
            return build_bank(
                ctx,
                task=task.name,
                data_path=pool_path,
                anchors=anchors,
                epochs=options.epochs,
                rank=BASELINE_RANK,
                anchor_data=options.anchor_data,
                min_history=options.min_history,
                lr=options.lr,
                base_model=options.base_model,
                embedder=options.embedder,
                seed=split.seed,
                max_steps=options.max_steps,
                progress=lambda stage, done, total: report(f"bank {stage}", done, total),
            )


def _bank_methods(
    options: EvalOptions,
    ctx: RegistryContext,
    bank: Any,
    seed: int,
    entries: list[_Entry],
    methods: list[str],
    predictor: _Predictor,
    timings: dict[str, float],
    report: ProgressFn,
) -> dict[str, list[str]]:
    """Predictions of mta-fuse, mta and mta-factorwise for every test entry."""
    from mta.registry import service

    detail = service.get_bank(ctx, bank.task, str(bank.version))
    anchor_blobs = {a.anchor_id: a.adapter_blob for a in detail.anchors}
    out: dict[str, list[str]] = {m: [] for m in methods}
    # The factor-wise reference is a separate registry user with its own recipe and stack.
    variants = []
    if "mta-fuse" in methods or "mta" in methods:
        variants.append(("", options.fusion))
    if "mta-factorwise" in methods:
        variants.append(("-fw", "factorwise"))
    for n, e in enumerate(entries):
        base_id = f"{EVAL_USER_PREFIX}-s{seed}-{e.entry['user_id']}"
        for suffix, fusion in variants:
            user_id = base_id + suffix
            timer = "mta-fuse" if not suffix else "mta-factorwise"
            with _Timer(timings, timer):
                # Only the profile is registered: the query and its gold stay out of the registry.
                service.add_user(
                    ctx,
                    user_id=user_id,
                    task=bank.task,
                    profile={"profile": e.entry["profile"]},
                    bank_ref=str(bank.version),
                )
            try:
                out_name = "mta" if not suffix else "mta-factorwise"
                predictions = _predict_bank_user(
                    options,
                    ctx,
                    user_id,
                    fusion,
                    seed,
                    e,
                    anchor_blobs,
                    predictor,
                    timings,
                    fuse_only=not suffix and "mta-fuse" in methods,
                    stacked=out_name in methods,
                    timer=timer,
                )
                for name, values in predictions.items():
                    out["mta-fuse" if name == "fuse" else out_name].extend(values)
            finally:
                service.delete_user(ctx, user_id)
        report("mta users", n + 1, len(entries))
    return out


def _predict_bank_user(
    options: EvalOptions,
    ctx: RegistryContext,
    user_id: str,
    fusion: str,
    seed: int,
    entry: _Entry,
    anchor_blobs: dict[str, str],
    predictor: _Predictor,
    timings: dict[str, float],
    *,
    fuse_only: bool,
    stacked: bool,
    timer: str,
) -> dict[str, list[str]]:
    """Fuse (and stack) one registered user; predictions keyed "fuse" and "stack"."""
    from mta.export import stack_onto
    from mta.peft_io import adapter_from_bytes
    from mta.registry import service

    out: dict[str, list[str]] = {}
    with _Timer(timings, timer):
        recipe = service.fuse_user(
            ctx, user_id, top_k=options.top_k, method=fusion, weight_rule=options.weight_rule
        )
        fused = _fused_adapter(ctx, recipe, anchor_blobs)
        if fuse_only:
            out["fuse"] = predictor.predict(entry.items, fused)
    if not stacked:
        return out
    with _Timer(timings, "mta" if timer == "mta-fuse" else "mta-factorwise"):
        stack = service.adapt_user(
            ctx,
            user_id,
            shots=options.shots,
            rank=options.stack_rank,
            epochs=options.user_epochs,
            lr=options.user_lr,
            seed=seed,
            max_steps=options.max_steps,
        )
        _check_shots(stack, entry)
        combined = stack_onto(fused, adapter_from_bytes(ctx.store.get_bytes(stack.blob)))
        out["stack"] = predictor.predict(entry.items, combined)
    return out


def _fused_adapter(ctx: RegistryContext, recipe: Any, anchor_blobs: dict[str, str]) -> Any:
    """The fused adapter a recipe describes, rebuilt in memory from its adapter identity."""
    from mta.registry.identity import identity_of
    from mta.registry.service import materialize_fused

    identity = identity_of(recipe, None, anchor_blobs, base_model="")
    return materialize_fused(
        ctx, list(identity.anchors), identity.method, identity.params.get("rank")
    )


def _check_shots(stack: Any, entry: _Entry) -> None:
    """Fail loudly if the registry trained the stack on other shots than the baselines."""
    used = stack.train_config.get("shot_indices")
    if used is not None and list(used) != list(entry.shot_indices):
        raise MtaError(
            f"user {entry.entry['user_id']}: the registry stack used shots {list(used)}, "
            f"the evaluation expected {entry.shot_indices}"
        )
