"""`mta eval`: LaMP evaluation, every method side by side on the same model and prompts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mta.cli.eval_options import (
    AnchorDataOpt,
    AnchorsOpt,
    BatchSizeOpt,
    CheckpointOpt,
    ClusterBootstrapOpt,
    DataOpt,
    DecodeOpt,
    EpochsOpt,
    EvalJsonOutOpt,
    FusionOpt,
    ItemBootstrapOpt,
    LimitOpt,
    LrOpt,
    MaxNewTokensOpt,
    MaxStepsOpt,
    MethodsOpt,
    MinHistoryOpt,
    PlotOpt,
    ReportJsonOutOpt,
    ResamplesOpt,
    ResultFilesArg,
    ResumeOpt,
    SeedOpt,
    SeedsOpt,
    ShotsOpt,
    StackDtypeOpt,
    StackModulesOpt,
    StackRankOpt,
    TaskOpt,
    TestDataOpt,
    TestFractionOpt,
    TopKOpt,
    UserEpochsOpt,
    UserLrOpt,
    WorkdirOpt,
)
from mta.cli.options import BaseModelOpt, DeviceOpt, EmbedderOpt, JsonOpt, typed_locations
from mta.cli.output import Output, log
from mta.cli.progress import StageProgress
from mta.evaluation.options import DEFAULTS, EvalOptions

eval_app = typer.Typer(help="LaMP evaluation: the methods side by side.")


# long: typer option signature (33 options), each passed on to EvalOptions by name
@eval_app.command("eval")
def eval_command(
    ctx: typer.Context,
    task: TaskOpt,
    data: DataOpt = DEFAULTS.data,
    test_data: TestDataOpt = DEFAULTS.test_data,
    methods: MethodsOpt = DEFAULTS.methods,
    anchors: AnchorsOpt = DEFAULTS.anchors,
    top_k: TopKOpt = DEFAULTS.top_k,
    shots: ShotsOpt = DEFAULTS.shots,
    stack_rank: StackRankOpt = DEFAULTS.stack_rank,
    stack_dtype: StackDtypeOpt = DEFAULTS.stack_dtype,
    stack_modules: StackModulesOpt = DEFAULTS.stack_modules,
    fusion: FusionOpt = DEFAULTS.fusion,
    seed: SeedOpt = DEFAULTS.seed,
    seeds: SeedsOpt = DEFAULTS.seeds,
    limit: LimitOpt = DEFAULTS.limit,
    test_fraction: TestFractionOpt = DEFAULTS.test_fraction,
    epochs: EpochsOpt = DEFAULTS.epochs,
    lr: LrOpt = DEFAULTS.lr,
    user_epochs: UserEpochsOpt = DEFAULTS.user_epochs,
    user_lr: UserLrOpt = DEFAULTS.user_lr,
    max_steps: MaxStepsOpt = DEFAULTS.max_steps,
    min_history: MinHistoryOpt = DEFAULTS.min_history,
    anchor_data: AnchorDataOpt = DEFAULTS.anchor_data,
    base_model: BaseModelOpt = DEFAULTS.base_model,
    device: DeviceOpt = DEFAULTS.device,
    embedder: EmbedderOpt = DEFAULTS.embedder,
    max_new_tokens: MaxNewTokensOpt = DEFAULTS.max_new_tokens,
    batch_size: BatchSizeOpt = DEFAULTS.batch_size,
    resamples: ResamplesOpt = DEFAULTS.n_resamples,
    item_bootstrap: ItemBootstrapOpt = DEFAULTS.item_bootstrap,
    cluster_bootstrap: ClusterBootstrapOpt = False,
    decode: DecodeOpt = DEFAULTS.decode,
    json_out: EvalJsonOutOpt = None,
    plot: PlotOpt = None,
    checkpoint: CheckpointOpt = DEFAULTS.checkpoint,
    resume: ResumeOpt = DEFAULTS.resume,
    workdir: WorkdirOpt = None,
    json_mode: JsonOpt = False,
) -> None:
    """Split users by real user, build a bank from the pool, score every method.

    With --test-data the pool is --data and every user of --test-data is tested. The bank
    and the run go to a private temporary registry, or to the one given with the root
    options (`mta --db URL --store URL eval ...`; the environment variables do not count,
    so an evaluation never writes into a production registry by accident).

    Prints each metric's mean with a 95% bootstrap CI per method, for the queries only and
    for all scored items, and paired bootstrap intervals of the differences vs `mta`.
    """
    options = EvalOptions(
        task=task,
        data=data,
        test_data=test_data,
        methods=methods,
        anchors=anchors,
        top_k=top_k,
        shots=shots,
        stack_rank=stack_rank,
        stack_dtype=stack_dtype,
        stack_modules=stack_modules,
        fusion=fusion,
        seed=seed,
        seeds=seeds,
        limit=limit,
        test_fraction=test_fraction,
        epochs=epochs,
        lr=lr,
        user_epochs=user_epochs,
        user_lr=user_lr,
        max_steps=max_steps,
        min_history=min_history,
        anchor_data=anchor_data,
        base_model=base_model,
        device=device,
        embedder=embedder,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        n_resamples=resamples,
        item_bootstrap=item_bootstrap,
        decode=decode,
        checkpoint=checkpoint,
        resume=resume,
    )
    _check_bootstrap_flags(item_bootstrap=item_bootstrap, cluster_bootstrap=cluster_bootstrap)
    options.validate()
    results = _run(ctx, options, workdir)
    _write_outputs(results, json_out, plot)
    _emit(results, json_mode)


def _check_bootstrap_flags(*, item_bootstrap: bool, cluster_bootstrap: bool) -> None:
    """Refuse --item-bootstrap with the hidden --cluster-bootstrap (its opposite)."""
    if item_bootstrap and cluster_bootstrap:
        from mta.evaluation.statistics import EvaluationError

        raise EvaluationError("--item-bootstrap and --cluster-bootstrap contradict each other")


def _run(ctx: typer.Context, options: EvalOptions, workdir: Path | None) -> dict[str, Any]:
    """Run the evaluation in the registry the root options typed (or a private one)."""
    from mta.evaluation.runner import run_eval
    from mta.evaluation.workspace import eval_registry

    where = typed_locations(ctx)
    with (
        eval_registry(where["db"], where["store"], workdir) as (registry, label),
        StageProgress() as progress,
    ):
        return run_eval(options, registry, registry_label=label, progress=progress, log=log)


def _emit(results: dict[str, Any], json_mode: bool) -> None:
    """Print a result: its JSON without the per-item rows, or the tables."""
    if json_mode:
        Output(json_mode=True).emit_json({k: v for k, v in results.items() if k != "items"})
        return
    render_results(Output(json_mode=False), results)


def eval_report_command(
    results: ResultFilesArg,
    item_bootstrap: ItemBootstrapOpt = DEFAULTS.item_bootstrap,
    resamples: ResamplesOpt = DEFAULTS.n_resamples,
    json_out: ReportJsonOutOpt = None,
    plot: PlotOpt = None,
    json_mode: JsonOpt = False,
) -> None:
    """Summarize saved evaluation results again: pool seeds run apart, or change the bootstrap.

    The tables equal those of one `mta eval --seeds N` run over the same seeds. Methods
    missing from a file (an interrupted run's checkpoint) are left out of every table.
    """
    from mta.evaluation.results import item_rows, pool_results, summarize_predictions
    from mta.evaluation.statistics import EvaluationError

    if resamples < 1:
        raise EvaluationError(f"--resamples must be at least 1, got {resamples}")
    pooled = pool_results(results)
    task = pooled.task
    for name in pooled.dropped:
        log(f"leaving out {name}: not in every result file")
    stats = summarize_predictions(
        task,
        pooled.methods,
        pooled.items,
        pooled.predictions,
        n_resamples=resamples,
        seed=int(pooled.config.get("seed", 0)),
        item_bootstrap=item_bootstrap,
    )
    document = {
        "config": {**pooled.config, "n_resamples": resamples, "item_bootstrap": item_bootstrap},
        "task": task.name,
        "lamp_id": task.lamp_id,
        "metrics": list(task.metrics),
        "methods": pooled.methods,
        **stats,
        "splits": pooled.splits,
        "items": item_rows(pooled.items, pooled.predictions),
    }
    _write_outputs(document, json_out, plot)
    _emit(document, json_mode)


def _write_outputs(results: dict[str, Any], json_out: Path | None, plot: Path | None) -> None:
    """Write the result JSON and the chart where asked."""
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
        log(f"results written to {json_out}")
    if plot is not None:
        from mta.evaluation.plot import plot_results

        plot_results(results, plot)
        log(f"chart written to {plot}")


def render_results(out: Output, results: dict[str, Any]) -> None:
    """Print the per-method and paired-difference tables of every subset, then per user."""
    from mta.evaluation.report import (
        differences_table,
        per_user_table,
        results_table,
        versus_line,
    )
    from mta.evaluation.summary import SubsetSummary

    for name, data in results["subsets"].items():
        if name == "all" and data["n_items"] == results["subsets"]["query"]["n_items"]:
            continue
        summary = SubsetSummary.from_dict(data)
        what = "queries only" if name == "query" else "all scored items (queries + non-shot items)"
        counts = f"{data['n_items']} items from {data['n_users']} test entries"
        if summary.n_groups:
            counts += f" of {summary.n_groups} real users"
        title = f"{results['task']} — {what}: {counts}; 95% CIs resample {summary.resampled}"
        out.table(*results_table(summary), title=title)
        if summary.differences:
            out.table(
                *differences_table(summary),
                title=f"paired bootstrap: method − {summary.reference} (▲/▼: CI excludes 0)",
            )
    per_user = results.get("per_user")
    if per_user and per_user["users"]:
        columns, rows, title = per_user_table(per_user)
        out.table(columns, rows, title=title)
        versus = versus_line(per_user)
        if versus:
            log(versus)
    timings = results.get("timings_s", {})
    if "eval_run_id" in results:
        log(
            f"eval run {results.get('eval_run_id')} recorded ({results.get('registry')}); "
            f"wall time {timings.get('total', 0):.0f}s"
        )
    for note in results.get("notes", []):
        log(f"note: {note}")
