"""`mta user add`: one user with their profile, or every user of a JSON list (in batches)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mta.cli.bulk import (
    BulkProgress,
    finish,
)
from mta.cli.options import JsonOpt, registry_context
from mta.cli.output import Output
from mta.cli.user_input import read_profile

if TYPE_CHECKING:
    pass


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
    from mta.registry.service import add_users, only_task_with_bank, summarize

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
