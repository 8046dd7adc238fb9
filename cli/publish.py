"""`mta publish`: users' adapters as `<target>/<user id>~<version>/` PEFT folders for engines."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mta.cli.options import JsonOpt, fits_int64, registry_context
from mta.cli.output import Output, log, warning
from mta.cli.progress import StageProgress

if TYPE_CHECKING:
    from mta.registry.context import RegistryContext
    from mta.registry.entities import PublishResult
    from mta.registry.service import PublishRequest

_SELECT = "Selection"
_BOUNDS = "Bounds"
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

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


def parse_duration(text: str | None) -> float | None:
    """`90`, `90s`, `30m`, `12h` or `7d` as seconds; None stays None.

    Raises:
        typer.BadParameter: anything else (a usage error, exit 2).
    """
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None or float(match[1]) <= 0:
        raise typer.BadParameter(
            f"{text!r} is not a duration; use a positive number with s, m, h or d (30m, 12h)",
            param_hint="'--active-since'",
        )
    return float(match[1]) * DURATION_UNITS[match[2] or "s"]


# long: a typer command's signature is its option table
def publish_command(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(help="Folder, file://PATH or s3://BUCKET/PREFIX.", show_default=False),
    ],
    bank: Annotated[
        str | None,
        typer.Option(
            "--bank", help="Only this task's users.", metavar="TASK", rich_help_panel=_SELECT
        ),
    ] = None,
    users: Annotated[
        list[str] | None,
        typer.Option(
            "--users",
            help="Publish these users (repeat or comma-separate).",
            rich_help_panel=_SELECT,
        ),
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="File of user ids to publish, one per line (# comments).",
            rich_help_panel=_SELECT,
        ),
    ] = None,
    active_since: Annotated[
        str | None,
        typer.Option(
            "--active-since",
            metavar="DURATION",
            help="Also publish users whose adapter was made (adapted, else fused) within "
            "DURATION: 90s, 30m, 12h, 7d.",
            rich_help_panel=_SELECT,
        ),
    ] = None,
    served_model_name: ServedNameOpt = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Tensor precision: fp16, bf16 or fp32.")
    ] = "fp16",
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="peft (vLLM, LoRAX, PEFT), or gguf: the PEFT files plus adapter_model.gguf "
            "for llama.cpp (fp16 or fp32).",
        ),
    ] = "peft",
    max_rank: Annotated[
        int | None,
        typer.Option(
            "--max-rank",
            min=1,
            callback=fits_int64,
            help="Compress to this rank (SVD) for capped engines.",
        ),
    ] = None,
    keep_previous: Annotated[
        int,
        typer.Option(
            "--keep-previous",
            min=0,
            callback=fits_int64,
            metavar="SECONDS",
            help="Keep a user's replaced version loadable this long (requests in flight).",
            rich_help_panel=_BOUNDS,
        ),
    ] = 600,
    max_bytes: Annotated[
        int | None,
        typer.Option(
            "--max-bytes",
            min=1,
            callback=fits_int64,
            metavar="N",
            help="Keep the published folders under N bytes: the least recently published "
            "(outside this round's selection) and then the oldest adapters are evicted.",
            rich_help_panel=_BOUNDS,
        ),
    ] = None,
    watch: Annotated[
        float | None,
        typer.Option(
            "--watch", min=0.001, metavar="SECONDS", help="Keep publishing every SECONDS."
        ),
    ] = None,
    rounds: Annotated[
        int | None,
        typer.Option(
            "--rounds", min=1, callback=fits_int64, hidden=True, help="Stop --watch after N."
        ),
    ] = None,
    json_mode: JsonOpt = False,
) -> None:
    """Write users' adapters as TARGET/<user_id>~<version>/ PEFT folders.

    New bytes get a new folder name, so engines never serve a stale copy;
    the replaced one stays --keep-previous seconds. Deleted users' folders
    go. TARGET/mta-manifest.json (user id -> name, rank, dtype, vLLM
    --max-lora-rank, base model) is written after the folders. --watch
    repeats (with --json: one JSON line a round).

    Example:

        mta publish /srv/loras --bank movie_tagging --served-model-name org/model
    """
    from mta.registry.service import PublishRequest, publish_users, read_id_file

    ids = split_user_ids(users)
    if from_file is not None:
        ids = [*(ids or []), *read_id_file(from_file)]
    request = PublishRequest(
        task=bank,
        user_ids=tuple(ids) if ids is not None else None,
        active_since=parse_duration(active_since),
        served_model_name=served_model_name,
        dtype=dtype,
        format=fmt,
        max_rank=max_rank,
        keep_previous=keep_previous,
        max_bytes=max_bytes,
    )
    out = Output(json_mode)
    with registry_context(ctx) as registry:
        if watch is None:
            with StageProgress(enabled=not json_mode) as progress:
                result = publish_users(registry, target, request, progress=progress)
            _report(out, result)
            return
        _watch(registry, target, request, interval=watch, rounds=rounds, json_mode=json_mode)


def _watch(
    registry: RegistryContext,
    target: str,
    request: PublishRequest,
    *,
    interval: float,
    rounds: int | None,
    json_mode: bool,
) -> None:
    """Publish every `interval` seconds until interrupted (or after `rounds` rounds)."""
    from mta.registry.service import watch_publish

    warned: set[str] = set()  # a base-model warning is printed once, not every round

    def on_round(result: PublishResult) -> None:
        for line in result.warnings:
            if line not in warned:
                warned.add(line)
                warning(line)
        _report_round(json_mode, result)

    try:
        watch_publish(
            registry,
            target,
            request,
            interval=interval,
            rounds=rounds,
            on_round=on_round,
            on_error=lambda e: warning(f"publish round failed, retrying: {e}"),
        )
    except KeyboardInterrupt:
        log("stopped")  # a round writes its manifest after its folders: stopping is safe


def _warn_left_out(result: PublishResult) -> None:
    """Name the users that were not published, and why, on stderr."""
    if result.refused:
        warning(
            f"not published (ids starting with '.' cannot be folders): {', '.join(result.refused)}"
        )
    if result.skipped:
        warning(f"not published (no recipe yet; run `mta user fuse`): {', '.join(result.skipped)}")
    if result.evicted:
        warning(f"evicted to stay within --max-bytes: {', '.join(result.evicted)}")


def _vllm_rank(result: PublishResult) -> str:
    """The --max-lora-rank line: the value, or why there is none."""
    if result.max_lora_rank is not None:
        return str(result.max_lora_rank)
    return "-" if not result.published_users else "none (rank > 512: publish with --max-rank)"


def _report(out: Output, result: PublishResult) -> None:
    """One round's summary: a table, or the result as JSON."""
    for line in result.warnings:
        warning(line)
    _warn_left_out(result)
    if out.json_mode:
        out.emit_json(result.to_dict())
        return
    out.record(
        {
            "target": result.target,
            "written": len(result.written),
            "unchanged": len(result.unchanged),
            "removed / evicted": f"{len(result.removed)} / {len(result.evicted)}",
            "skipped / refused": f"{len(result.skipped)} / {len(result.refused)}",
            "names retired": len(result.retired),
            "bytes written": result.bytes_written,
            "published users / bytes": f"{result.published_users} / {result.published_bytes}",
            "dtype / largest rank": f"{result.dtype} / {result.rank}",
            "vLLM --max-lora-rank": _vllm_rank(result),
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
        f"{len(result.removed)} removed, {len(result.retired)} names retired, "
        f"{result.published_users} published ({result.seconds:.2f}s, "
        f"vLLM --max-lora-rank {_vllm_rank(result)})"
    )
