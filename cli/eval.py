"""`mta eval`: LaMP evaluation, every method side by side on the same model and prompts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mta.cli.options import BaseModelOpt, EmbedderOpt, JsonOpt, typed_locations
from mta.cli.output import Output, log
from mta.cli.progress import StageProgress
from mta.evaluation.options import DEFAULTS, EvalOptions

eval_app = typer.Typer(help="LaMP evaluation: the methods side by side.")

# Options `mta eval` and `mta eval-report` share.
ResamplesOpt = Annotated[int, typer.Option("--resamples", help="Bootstrap resamples.")]
ItemBootstrapOpt = Annotated[
    bool,
    typer.Option(
        "--item-bootstrap",
        help="Resample items instead of real users (narrower: ignores that a real "
        "user's entries share items).",
    ),
]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="Write a PNG chart here.")]


@eval_app.command("eval")
# Long only by its option declarations: typer reads the options from the signature.
def eval_command(
    ctx: typer.Context,
    task: Annotated[str, typer.Option("--task", help="LaMP task, e.g. movie_tagging.")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Per-user JSON, the users to split, or the pool with --test-data "
            "(default: <task>/users.json under $MTA_LAMP_DIR, then ./lamp, then ../shared/lamp).",
        ),
    ] = DEFAULTS.data,
    test_data: Annotated[
        Path | None,
        typer.Option(
            "--test-data",
            help="Per-user JSON whose every user is a test user; --data is then the pool, "
            "unsplit (--test-fraction unused). Refused when a real user is in both files.",
        ),
    ] = DEFAULTS.test_data,
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            help="Comma-separated method names (the default lists every method).",
        ),
    ] = DEFAULTS.methods,
    anchors: Annotated[
        int, typer.Option("--anchors", help="Anchors in the bank.")
    ] = DEFAULTS.anchors,
    top_k: Annotated[int, typer.Option("--top-k", help="Anchors fused per user.")] = DEFAULTS.top_k,
    shots: Annotated[
        int, typer.Option("--shots", help="Profile items each user trains on.")
    ] = DEFAULTS.shots,
    stack_rank: Annotated[
        int, typer.Option("--stack-rank", help="Rank of the MTA stack.")
    ] = DEFAULTS.stack_rank,
    fusion: Annotated[
        str, typer.Option("--fusion", help="Fusion of the `mta` methods: cat, svd, factorwise.")
    ] = DEFAULTS.fusion,
    seed: Annotated[int, typer.Option("--seed", help="First split/training seed.")] = DEFAULTS.seed,
    seeds: Annotated[
        int, typer.Option("--seeds", help="Seeds to run (seed, seed+1, ...); items are pooled.")
    ] = DEFAULTS.seeds,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Cap on test users (entries) per seed.")
    ] = DEFAULTS.limit,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="Share of real users held out for testing.")
    ] = DEFAULTS.test_fraction,
    epochs: Annotated[
        int, typer.Option("--epochs", help="Epochs of the anchor LoRAs and the task LoRA.")
    ] = DEFAULTS.epochs,
    lr: Annotated[
        float, typer.Option("--lr", help="LR of the anchor LoRAs and task LoRA.")
    ] = DEFAULTS.lr,
    user_epochs: Annotated[
        int, typer.Option("--user-epochs", help="Epochs of per-user training (stack, OPPU).")
    ] = DEFAULTS.user_epochs,
    user_lr: Annotated[
        float, typer.Option("--user-lr", help="LR of per-user training (stack, OPPU).")
    ] = DEFAULTS.user_lr,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Cap on optimizer steps of every training.")
    ] = DEFAULTS.max_steps,
    min_history: Annotated[
        int, typer.Option("--min-history", help="Fewest profile items an anchor needs.")
    ] = DEFAULTS.min_history,
    anchor_data: Annotated[
        str, typer.Option("--anchor-data", help="Anchor training data: user (paper) or cluster.")
    ] = DEFAULTS.anchor_data,
    base_model: BaseModelOpt = DEFAULTS.base_model,
    embedder: EmbedderOpt = DEFAULTS.embedder,
    max_new_tokens: Annotated[
        int | None,
        typer.Option("--max-new-tokens", help="Generation budget (default 8 labels, 24 text)."),
    ] = DEFAULTS.max_new_tokens,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Generation batch size.")
    ] = DEFAULTS.batch_size,
    resamples: ResamplesOpt = DEFAULTS.n_resamples,
    item_bootstrap: ItemBootstrapOpt = DEFAULTS.item_bootstrap,
    cluster_bootstrap: Annotated[
        bool,
        typer.Option(
            "--cluster-bootstrap", hidden=True, help="Resample real users (now the default)."
        ),
    ] = False,
    decode: Annotated[
        str,
        typer.Option(
            "--decode",
            help="generate: parse a greedy generation (the paper); rank: answer the label "
            "with the highest length-normalized log-likelihood (classification tasks).",
        ),
    ] = DEFAULTS.decode,
    json_out: Annotated[
        Path | None, typer.Option("--json-out", help="Write the full result JSON here.")
    ] = None,
    plot: PlotOpt = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", help="Rewrite this JSON after every finished method (partial results)."
        ),
    ] = DEFAULTS.checkpoint,
    workdir: Annotated[
        Path | None,
        typer.Option("--workdir", help="Keep the private registry (bank, eval run) here."),
    ] = None,
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
    from mta.evaluation.runner import run_eval
    from mta.evaluation.workspace import eval_registry

    options = EvalOptions(
        task=task,
        data=data,
        test_data=test_data,
        methods=methods,
        anchors=anchors,
        top_k=top_k,
        shots=shots,
        stack_rank=stack_rank,
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
        embedder=embedder,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        n_resamples=resamples,
        item_bootstrap=item_bootstrap,
        decode=decode,
        checkpoint=checkpoint,
    )
    if item_bootstrap and cluster_bootstrap:
        from mta.evaluation.statistics import EvaluationError

        raise EvaluationError("--item-bootstrap and --cluster-bootstrap contradict each other")
    options.validate()
    out = Output(json_mode=json_mode)
    where = typed_locations(ctx)
    with (
        eval_registry(where["db"], where["store"], workdir) as (registry, label),
        StageProgress() as progress,
    ):
        results = run_eval(options, registry, registry_label=label, progress=progress, log=log)
    _write_outputs(results, json_out, plot)
    if json_mode:
        out.emit_json({k: v for k, v in results.items() if k != "items"})
        return
    render_results(out, results)


def eval_report_command(
    results: Annotated[
        list[Path],
        typer.Argument(
            help="Result files of `mta eval --json-out` (or --checkpoint files) of one task; "
            "their seeds are pooled.",
            show_default=False,
        ),
    ],
    item_bootstrap: ItemBootstrapOpt = DEFAULTS.item_bootstrap,
    resamples: ResamplesOpt = DEFAULTS.n_resamples,
    json_out: Annotated[
        Path | None, typer.Option("--json-out", help="Write the pooled result JSON here.")
    ] = None,
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
    if json_mode:
        Output(json_mode=True).emit_json({k: v for k, v in document.items() if k != "items"})
        return
    render_results(Output(json_mode=False), document)


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
    from mta.evaluation.report import differences_table, per_user_table, results_table
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
    timings = results.get("timings_s", {})
    if "eval_run_id" in results:
        log(
            f"eval run {results.get('eval_run_id')} recorded ({results.get('registry')}); "
            f"wall time {timings.get('total', 0):.0f}s"
        )
    for note in results.get("notes", []):
        log(f"note: {note}")
