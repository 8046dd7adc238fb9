"""`mta user fuse`: store one user's recipe, or many users' in one job (here or on Ray).

One id and no selection flag keep the single-user behaviour and output; several ids,
`--from FILE`, `--all`, `--stale`, `--missing` or `--bank TASK` make a bulk job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from mta.cli.bulk import (
    AddressOpt,
    AllOpt,
    BankFilterOpt,
    Execution,
    Executor,
    ExecutorOpt,
    ForceOpt,
    FromOpt,
    IdsArg,
    MissingOpt,
    Selection,
    StaleOpt,
    WorkersOpt,
    run_bulk,
)
from mta.cli.options import JsonOpt, fits_int64, registry_context
from mta.cli.output import Output
from mta.cli.user_render import render_recipe

if TYPE_CHECKING:
    from mta.registry.service import FuseRequest


def user_fuse(
    ctx: typer.Context,
    user_ids: IdsArg = None,
    top_k: Annotated[
        int, typer.Option("--top-k", min=1, callback=fits_int64, help="Anchors to fuse.")
    ] = 2,
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
    from mta.registry.service import FuseRequest, WorkSpec

    request = FuseRequest(
        top_k=top_k, method=method, weight_rule=weight_rule, temperature=temperature
    ).validate()
    selection = Selection(user_ids or [], from_file, all_users, stale, missing, bank)
    if selection.is_bulk() or executor is Executor.ray:
        spec = WorkSpec.fuse_users(request, force=force, refresh=stale)
        run_bulk(ctx, selection, spec, Execution(executor, address, workers), json_mode)
        return
    _fuse_one(ctx, selection.ids[0], request, json_mode)


def _fuse_one(ctx: typer.Context, user_id: str, request: FuseRequest, json_mode: bool) -> None:
    """Today's single-user fuse: always stores a new recipe, prints it."""
    from mta.registry.service import fuse_user

    out = Output(json_mode)
    with registry_context(ctx) as registry:
        recipe = fuse_user(registry, user_id, request).to_dict()
    if json_mode:
        out.emit_json(recipe)
        return
    render_recipe(out, recipe)
