"""`mta publish`: every user's adapter as `<target>/<user_id>/`, for engines that load by name."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mta.cli.options import JsonOpt, registry_context
from mta.cli.output import Output, log, warning
from mta.cli.progress import StageProgress

if TYPE_CHECKING:
    from mta.registry.context import RegistryContext
    from mta.registry.entities import PublishResult

ServedNameOpt = Annotated[
    str | None,
    typer.Option(
        "--served-model-name",
        help="Write NAME as base_model_name_or_path: vLLM's filesystem resolver loads a folder "
        "only when it equals the model vLLM was started with (vllm serve NAME). Default: the "
        "bank's base model, 'smollm2' as its hub id.",
        show_default=False,
    ),
]


def split_user_ids(values: list[str] | None) -> list[str] | None:
    """`--users a,b --users c` → ["a", "b", "c"]; None when the option was not given."""
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def publish_command(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(help="Folder, file://PATH or s3://BUCKET/PREFIX.", show_default=False),
    ],
    bank: Annotated[
        str | None,
        typer.Option("--bank", help="Publish only this task's users.", metavar="TASK"),
    ] = None,
    users: Annotated[
        list[str] | None,
        typer.Option("--users", help="Publish only these users (repeat or comma-separate)."),
    ] = None,
    served_model_name: ServedNameOpt = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Tensor precision: fp32, fp16 or bf16.")
    ] = "fp32",
    max_rank: Annotated[
        int | None,
        typer.Option("--max-rank", min=1, help="Compress to this rank (SVD) for capped engines."),
    ] = None,
    watch: Annotated[
        float | None,
        typer.Option(
            "--watch", min=0.001, metavar="SECONDS", help="Keep publishing every SECONDS."
        ),
    ] = None,
    rounds: Annotated[
        int | None, typer.Option("--rounds", min=1, hidden=True, help="Stop --watch after N.")
    ] = None,
    json_mode: JsonOpt = False,
) -> None:
    """Materialize users' adapters as TARGET/<user_id>/ PEFT folders + a manifest.

    Only users whose adapter changed are rewritten, each folder swapped in whole;
    folders of deleted users are removed; TARGET/mta-manifest.json comes last.
    --watch repeats until interrupted (with --json: one JSON line per round).

    Example:

        mta publish /srv/loras --bank movie_tagging --served-model-name org/model
    """
    from mta.registry.service import publish_users

    out = Output(json_mode)
    options: dict[str, Any] = {
        "task": bank,
        "user_ids": split_user_ids(users),
        "served_model_name": served_model_name,
        "dtype": dtype,
        "max_rank": max_rank,
    }
    with registry_context(ctx) as registry:
        if watch is None:
            with StageProgress(enabled=not json_mode) as progress:
                result = publish_users(registry, target, progress=progress, **options)
            _report(out, result)
            return
        _watch(registry, target, options, interval=watch, rounds=rounds, json_mode=json_mode)


def _watch(
    registry: RegistryContext,
    target: str,
    options: dict[str, Any],
    *,
    interval: float,
    rounds: int | None,
    json_mode: bool,
) -> None:
    """Publish every `interval` seconds until interrupted (or after `rounds` rounds)."""
    from mta.registry.service import watch_publish

    try:
        watch_publish(
            registry,
            target,
            interval=interval,
            rounds=rounds,
            on_round=lambda r: _report_round(json_mode, r),
            on_error=lambda e: warning(f"publish round failed, retrying: {e}"),
            **options,
        )
    except KeyboardInterrupt:
        log("stopped")  # a round writes its manifest last, so stopping is always safe


def _warn_left_out(result: PublishResult) -> None:
    """Name the users that were not published, and why, on stderr."""
    if result.refused:
        warning(
            f"not published (ids starting with '.' or named mta-manifest.json cannot be "
            f"folders): {', '.join(result.refused)}"
        )
    if result.skipped:
        warning(f"not published (no recipe yet; run `mta user fuse`): {', '.join(result.skipped)}")


def _report(out: Output, result: PublishResult) -> None:
    """One round's summary: a table, or the result as JSON."""
    _warn_left_out(result)
    if out.json_mode:
        out.emit_json(result.to_dict())
        return
    out.record(
        {
            "target": result.target,
            "written": len(result.written),
            "unchanged": len(result.unchanged),
            "removed": len(result.removed),
            "skipped / refused": f"{len(result.skipped)} / {len(result.refused)}",
            "bytes written": result.bytes_written,
            "published users / bytes": f"{result.published_users} / {result.published_bytes}",
            "manifest written": result.manifest_written,
            "seconds": result.seconds,
        },
        title="Published",
    )


def _report_round(json_mode: bool, result: PublishResult) -> None:
    """A --watch round: one JSON line on stdout, or one line on stderr."""
    _warn_left_out(result)
    if json_mode:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
        sys.stdout.flush()
        return
    log(
        f"{result.target}: {len(result.written)} written, {len(result.unchanged)} unchanged, "
        f"{len(result.removed)} removed, {result.published_users} published "
        f"({result.seconds:.2f}s)"
    )
