"""`mta user adapt`: train one user's stack, or many users' in one job (here or on Ray).

One id and no selection flag keep the single-user behaviour and output; several ids or a
selection flag make a bulk job: the base model and each bank's anchors load once, each
user is committed on its own, users whose current stack already matches the request are
skipped unless `--force`, failures are reported and the job goes on (exit 1 if any failed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from mta.cli.bulk import (
    AddressOpt,
    AllOpt,
    BankFilterOpt,
    BatchUsersOpt,
    Execution,
    Executor,
    ExecutorOpt,
    ForceOpt,
    FromOpt,
    GpusPerWorkerOpt,
    IdsArg,
    MissingOpt,
    Selection,
    StaleOpt,
    WorkersOpt,
    run_bulk,
)
from mta.cli.options import DeviceOpt, JsonOpt, fits_int64, registry_context
from mta.cli.output import Output
from mta.cli.progress import StageProgress
from mta.stack_formats import DEFAULT_STACK_FORMAT

if TYPE_CHECKING:
    from mta.registry.service import AdaptRequest


# long: a typer option signature (18 options: training, selection, execution)
def user_adapt(
    ctx: typer.Context,
    shots: Annotated[
        int,
        typer.Option(
            "--shots", min=1, callback=fits_int64, help="History items to train the stack on."
        ),
    ],
    user_ids: IdsArg = None,
    rank: Annotated[
        int, typer.Option("--rank", min=1, callback=fits_int64, help="Rank of the stack LoRA.")
    ] = 1,
    epochs: Annotated[
        int, typer.Option("--epochs", min=1, callback=fits_int64, help="Training epochs.")
    ] = 3,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Learning rate.")] = 1e-3,
    seed: Annotated[
        int, typer.Option("--seed", min=0, callback=fits_int64, help="Training seed.")
    ] = 0,
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="Storage format of the stack: fp16, bf16, fp32, or quantized int8 "
            "(per-component scales) or nf4 (4-bit, per-block scales).",
        ),
    ] = DEFAULT_STACK_FORMAT,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, callback=fits_int64, help="Batch size.")
    ] = 4,
    stack_modules: Annotated[
        str,
        typer.Option(
            "--stack-modules",
            help="Modules the stack trains: all, attention, mlp, or a comma-separated list "
            "(e.g. q_proj,v_proj).",
        ),
    ] = "all",
    max_steps: Annotated[
        int | None,
        typer.Option("--max-steps", min=1, callback=fits_int64, help="Stop after this many steps."),
    ] = None,
    from_file: FromOpt = None,
    all_users: AllOpt = False,
    stale: StaleOpt = False,
    missing: MissingOpt = False,
    bank: BankFilterOpt = None,
    force: ForceOpt = False,
    executor: ExecutorOpt = Executor.local,
    address: AddressOpt = None,
    workers: WorkersOpt = 2,
    batch_users: BatchUsersOpt = 1,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    device: DeviceOpt = None,
    json_mode: JsonOpt = False,
) -> None:
    """Train an ultra-low-rank stack on top of the frozen fused adapter and store it.

    Fuses first when the user has no recipe yet. Only the stack's bytes persist. In bulk,
    a user whose current stack was trained exactly as asked is skipped unless --force, and
    --stale re-fuses users onto their task's latest bank before training.

    Example:

        mta user adapt alice --shots 5 --rank 1
        mta user adapt --missing --bank movie_tagging --shots 5
    """
    from mta.registry.service import AdaptRequest, WorkSpec

    request = AdaptRequest(
        shots=shots,
        rank=rank,
        epochs=epochs,
        lr=lr,
        seed=seed,
        dtype=dtype,
        modules=stack_modules,
        batch_size=batch_size,
        max_steps=max_steps,
    ).validate()
    selection = Selection(user_ids or [], from_file, all_users, stale, missing, bank)
    if selection.is_bulk() or executor is Executor.ray:
        spec = WorkSpec.adapt_users(
            request, force=force, refresh=stale, batch_users=batch_users, device=device
        )
        execution = Execution(executor, address, workers, gpus_per_worker)
        run_bulk(ctx, selection, spec, execution, json_mode)
        return
    _adapt_one(ctx, selection.ids[0], request, json_mode, device)


def _adapt_one(
    ctx: typer.Context, user_id: str, request: AdaptRequest, json_mode: bool, device: str | None
) -> None:
    """Today's single-user adapt: always trains, prints the stack."""
    from mta.registry.service import adapt_user

    out = Output(json_mode)
    with registry_context(ctx) as registry, StageProgress() as progress:
        registry.device = device
        stack = adapt_user(registry, user_id, request, progress=progress).to_dict()
    if json_mode:
        out.emit_json(stack)
        return
    config = stack.get("train_config") or {}
    losses = config.get("losses") or []
    out.record(
        {
            "stack": stack["stack_id"],
            "recipe": stack["recipe_id"],
            "bank": f"{stack['task']} v{stack['bank_version']}",
            "rank / dtype": f"{stack['rank']} / {stack['dtype']}",
            "stored bytes": stack["bytes"],
            "shots (items)": f"{config.get('shots')} {config.get('shot_indices')}",
            "epochs / steps": f"{config.get('epochs')} / {config.get('steps')}",
            "loss first -> last": (
                f"{losses[0]:.4f} -> {losses[-1]:.4f}" if losses else stack.get("final_loss")
            ),
            "blob": stack["blob"],
        },
        title=f"Stack for {user_id}",
    )
