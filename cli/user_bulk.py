"""`mta user add|fuse|adapt`: one user as before, or many users in one process.

One id (and no selection flag) keeps the single-user behaviour and output. Several ids,
`--from FILE`, `--all`, `--stale`, `--missing` or `--bank TASK` make a bulk job: the base
model and each bank's anchors load once, each user is committed on its own, users whose
current result already matches are skipped unless `--force`, failures are reported and
the job goes on (exit 1 if any failed). `cli/user.py` registers these commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mta.cli.bulk import BulkProgress, Execution, Executor, Selection, finish, run_bulk
from mta.cli.options import JsonOpt, registry_context
from mta.cli.output import Output
from mta.cli.progress import StageProgress

_SELECT = "Selection (several users: a bulk job)"
_RUN = "Bulk execution"


IdsArg = Annotated[
    list[str] | None,
    typer.Argument(help="User id(s); several make a bulk job.", metavar="ID", show_default=False),
]
FromOpt = Annotated[
    Path | None,
    typer.Option("--from", help="File of user ids, one per line.", rich_help_panel=_SELECT),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every user.", rich_help_panel=_SELECT)]
StaleOpt = Annotated[
    bool,
    typer.Option(
        "--stale",
        help="Users whose current stack is on an older bank version (re-fused onto the latest).",
        rich_help_panel=_SELECT,
    ),
]
MissingOpt = Annotated[
    bool,
    typer.Option("--missing", help="Users without a current stack.", rich_help_panel=_SELECT),
]
BankFilterOpt = Annotated[
    str | None,
    typer.Option("--bank", help="Only users of this task.", rich_help_panel=_SELECT),
]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force", help="Redo users whose current result already matches.", rich_help_panel=_RUN
    ),
]
ExecutorOpt = Annotated[
    Executor,
    typer.Option("--executor", help="Run users in this process or on Ray.", rich_help_panel=_RUN),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address", help="Ray cluster address (default: start a local one).", rich_help_panel=_RUN
    ),
]
WorkersOpt = Annotated[
    int, typer.Option("--workers", min=1, help="Ray workers.", rich_help_panel=_RUN)
]


def user_add(
    ctx: typer.Context,
    user_id: Annotated[
        str | None,
        typer.Argument(help="User id (not with --from).", metavar="ID", show_default=False),
    ] = None,
    bank: Annotated[
        str | None,
        typer.Option(
            "--bank",
            help="Task whose bank the user joins; TASK@VERSION or TASK@ALIAS pins a version "
            "(with --from: default the only task that has a bank).",
        ),
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help="Per-user JSON file, or - for stdin.")
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option("--from", help="Per-user JSON list: add every user in it, in batches."),
    ] = None,
    json_mode: JsonOpt = False,
) -> None:
    """Register a user with their history; the history is embedded for anchor lookup.

    Example:

        mta user add alice --bank movie_tagging --profile alice.json
        mta user add --from users.json --bank movie_tagging
    """
    if from_file is not None:
        if user_id is not None or profile is not None:
            raise typer.BadParameter("--from adds every user in the file; drop ID and --profile")
        _add_many(ctx, from_file, bank, json_mode)
        return
    if user_id is None or bank is None or profile is None:
        raise typer.BadParameter("give ID, --bank TASK and --profile FILE (or --from FILE)")
    _add_one(ctx, user_id, bank, profile, json_mode)


def _add_one(ctx: typer.Context, user_id: str, bank: str, profile: str, json_mode: bool) -> None:
    """Today's single-user add."""
    from mta.cli.user import read_profile
    from mta.registry.service import add_user

    task, _, bank_ref = bank.partition("@")
    data = read_profile(profile, user_id)
    out = Output(json_mode)
    with registry_context(ctx) as registry:
        user = add_user(
            registry, user_id=user_id, task=task, profile=data, bank_ref=bank_ref or None
        ).to_dict()
    out.result(
        f"added user {user_id!r} to {user['task']} v{user['bank_version']} "
        f"({user['profile_items']} history items); next: mta user fuse {user_id}",
        **user,
    )


def _add_many(ctx: typer.Context, path: Path, bank: str | None, json_mode: bool) -> None:
    """Add every user of a per-user JSON list, embedding them in batches."""
    import time

    from mta.lamp_data import read_json_file
    from mta.registry.errors import InvalidInputError
    from mta.registry.jobs.bulk import summarize
    from mta.registry.users.add_many import add_users, only_task_with_bank

    records = read_json_file(path)
    if not isinstance(records, list):
        raise InvalidInputError(f"{path}: expected a JSON list of users {{user_id, profile}}")
    out = Output(json_mode)
    start = time.perf_counter()
    with registry_context(ctx) as registry:
        task, _, bank_ref = (bank or only_task_with_bank(registry)).partition("@")
        with BulkProgress("add", len(records)) as progress:
            outcomes = add_users(
                registry, records, task=task, bank_ref=bank_ref or None, on_outcome=progress
            )
    finish(out, summarize(outcomes, time.perf_counter() - start), outcomes, "added")


def user_fuse(
    ctx: typer.Context,
    user_ids: IdsArg = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Anchors to fuse.")] = 2,
    method: Annotated[
        str, typer.Option("--method", help="Fusion method: cat (exact), svd, factorwise.")
    ] = "cat",
    weight_rule: Annotated[
        str, typer.Option("--weight-rule", help="Weights from scores: proportional, softmax.")
    ] = "proportional",
    temperature: Annotated[
        float, typer.Option("--temperature", min=0.0, help="Softmax temperature.")
    ] = 1.0,
    from_file: FromOpt = None,
    all_users: AllOpt = False,
    stale: StaleOpt = False,
    missing: MissingOpt = False,
    bank: BankFilterOpt = None,
    force: ForceOpt = False,
    executor: ExecutorOpt = Executor.local,
    address: AddressOpt = None,
    workers: WorkersOpt = 2,
    json_mode: JsonOpt = False,
) -> None:
    """Find the user's nearest anchors and store the fusion recipe (never the fused weights).

    In bulk, users that already have a recipe are skipped unless --force; --stale re-fuses
    users whose recipe is on an older bank version onto the latest.

    Example:

        mta user fuse alice --top-k 2 --method cat
        mta user fuse --missing --bank movie_tagging
    """
    fuse_args = {
        "top_k": top_k,
        "method": method,
        "weight_rule": weight_rule,
        "temperature": temperature,
    }
    selection = Selection(user_ids or [], from_file, all_users, stale, missing, bank)
    if selection.is_bulk() or executor is Executor.ray:
        spec = {"fuse_args": fuse_args, "force": force, "refresh": stale}
        execution = Execution(executor, address, workers)
        run_bulk(ctx, selection, "fuse", spec, execution, json_mode)
        return
    _fuse_one(ctx, selection.ids[0], fuse_args, json_mode)


def _fuse_one(ctx: typer.Context, user_id: str, fuse_args: dict[str, Any], json_mode: bool) -> None:
    """Today's single-user fuse: always stores a new recipe, prints it."""
    from mta.cli.user import render_recipe
    from mta.registry.service import fuse_user

    out = Output(json_mode)
    with registry_context(ctx) as registry:
        recipe = fuse_user(registry, user_id, **fuse_args).to_dict()
    if json_mode:
        out.emit_json(recipe)
        return
    render_recipe(out, recipe)


def user_adapt(
    ctx: typer.Context,
    shots: Annotated[
        int, typer.Option("--shots", min=1, help="History items to train the stack on.")
    ],
    user_ids: IdsArg = None,
    rank: Annotated[int, typer.Option("--rank", min=1, help="Rank of the stack LoRA.")] = 1,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")] = 3,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed", help="Training seed.")] = 0,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Storage dtype of the stack: fp16, bf16 or fp32.")
    ] = "fp16",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Batch size.")] = 4,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", min=1, help="Stop after this many steps.")
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
    train = {
        "shots": shots,
        "rank": rank,
        "epochs": epochs,
        "lr": lr,
        "seed": seed,
        "dtype": dtype,
        "batch_size": batch_size,
        "max_steps": max_steps,
    }
    selection = Selection(user_ids or [], from_file, all_users, stale, missing, bank)
    if selection.is_bulk() or executor is Executor.ray:
        spec = {"request": train, "force": force, "refresh": stale}
        execution = Execution(executor, address, workers)
        run_bulk(ctx, selection, "adapt", spec, execution, json_mode)
        return
    _adapt_one(ctx, selection.ids[0], train, json_mode)


def _adapt_one(ctx: typer.Context, user_id: str, train: dict[str, Any], json_mode: bool) -> None:
    """Today's single-user adapt: always trains, prints the stack."""
    from mta.registry.service import adapt_user

    out = Output(json_mode)
    with registry_context(ctx) as registry, StageProgress() as progress:
        stack = adapt_user(registry, user_id, progress=progress, **train).to_dict()
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
