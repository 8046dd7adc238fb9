"""`mta user recode`: re-store users' current stacks in another format, without training."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mta.cli.errors import EXIT_BAD_INPUT
from mta.cli.options import JsonOpt, registry_context
from mta.cli.output import Output, error


def user_recode(
    ctx: typer.Context,
    user_ids: Annotated[
        list[str] | None, typer.Argument(help="Users to recode.", show_default=False)
    ] = None,
    all_users: Annotated[
        bool, typer.Option("--all", help="Every user with a current stack.")
    ] = False,
    *,
    dtype: Annotated[
        str,
        typer.Option("--dtype", help="The format to store the stacks in: int8, nf4 (or fp16)."),
    ],
    json_mode: JsonOpt = False,
) -> None:
    """Store users' current stacks in another format (e.g. nf4) without training them again.

    An fp16 or fp32 stack recoded to int8 or nf4 is byte for byte what
    `mta user adapt --dtype FORMAT` stores for the same training.
    Other recodes (quantizing twice) are refused; users already in the format are skipped.

    Example:

        mta user recode --all --dtype nf4
    """
    from mta.registry.errors import RegistryError
    from mta.registry.service import list_users, recode_stack
    from mta.stack_formats import check_format

    if bool(user_ids) == all_users:
        raise typer.BadParameter("give user ids or --all (not both)", param_hint="USER_IDS")
    check_format(dtype)
    out = Output(json_mode)
    done: list[dict[str, Any]] = []
    refused: list[dict[str, str]] = []
    with registry_context(ctx) as registry:
        ids = user_ids or [u.user_id for u in list_users(registry)]
        for user_id in ids:
            try:
                done.append(recode_stack(registry, user_id, dtype).to_dict())
            except RegistryError as exc:
                if all_users and "no current stack" in str(exc):
                    continue  # --all: users never adapted have nothing to recode
                refused.append({"user_id": user_id, "reason": str(exc)})
    _report(out, done, refused, dtype)
    if refused:
        raise typer.Exit(EXIT_BAD_INPUT)


def _report(out: Output, done: list[dict], refused: list[dict], dtype: str) -> None:
    """One line (or the JSON document) for the whole recode."""
    recoded = [d for d in done if d["previous_stack_id"] is not None]
    before = sum(d["previous_bytes"] for d in recoded)
    after = sum(d["bytes"] for d in recoded)
    summary = {
        "dtype": dtype,
        "recoded": recoded,
        "skipped": [d["user_id"] for d in done if d["previous_stack_id"] is None],
        "refused": refused,
        "bytes_before": before,
        "bytes_after": after,
    }
    if out.json_mode:
        out.emit_json(summary)
        return
    for item in refused:
        error(f"{item['user_id']}: {item['reason']}")
    out.result(
        f"recoded {len(recoded)} stack(s) to {dtype}: {before} -> {after} bytes; "
        f"{len(summary['skipped'])} already {dtype}, {len(refused)} refused"
    )
