"""`mta bank`: build, push, list, show and alias versions of a task's meta-LoRA bank."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from mta.cli.bulk import Executor, GpusPerWorkerOpt
from mta.cli.options import (
    BaseModelOpt,
    DeviceOpt,
    EmbedderOpt,
    JsonOpt,
    fits_int64,
    registry_context,
)
from mta.cli.output import Output
from mta.cli.progress import StageProgress

bank_app = typer.Typer(
    help="Meta-LoRA banks: one versioned set of anchor LoRAs per task.",
    no_args_is_help=True,
)

TaskArg = Annotated[str, typer.Argument(help="Task name, e.g. movie_tagging.")]


class AnchorData(str, Enum):
    """Which examples train an anchor's LoRA."""

    user = "user"
    cluster = "cluster"


DataOpt = Annotated[
    Path, typer.Option("--data", help="Per-user JSON: [{user_id, profile, query}].")
]
AnchorsOpt = Annotated[
    int,
    typer.Option("--anchors", min=1, callback=fits_int64, help="Number of anchors (k-means k)."),
]
AnchorDataOpt = Annotated[
    AnchorData,
    typer.Option(
        "--anchor-data",
        help="Train each anchor on its whole k-means cluster's histories (default; "
        "better fusion, docs/results.md) or on its own history only (the paper).",
    ),
]
MinHistoryOpt = Annotated[
    int,
    typer.Option(
        "--min-history", min=1, callback=fits_int64, help="Fewest history items an anchor needs."
    ),
]
ExecutorOpt = Annotated[
    Executor,
    typer.Option("--executor", help="Train the anchors here, or each as a Ray task."),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address", help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: local)."
    ),
]
WorkersOpt = Annotated[
    int,
    typer.Option("--workers", min=1, callback=fits_int64, help="Anchors trained at once on Ray."),
]


@bank_app.command("build")
def bank_build(
    ctx: typer.Context,
    task: TaskArg,
    data: DataOpt,
    anchors: AnchorsOpt,
    epochs: Annotated[
        int, typer.Option("--epochs", min=1, callback=fits_int64, help="Epochs per anchor LoRA.")
    ] = 1,
    rank: Annotated[
        int, typer.Option("--rank", min=1, callback=fits_int64, help="Rank of the anchor LoRAs.")
    ] = 8,
    anchor_data: AnchorDataOpt = AnchorData.cluster,
    min_history: MinHistoryOpt = 8,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Learning rate.")] = 1e-3,
    base_model: BaseModelOpt = None,
    embedder: EmbedderOpt = None,
    seed: Annotated[
        int,
        typer.Option(
            "--seed", min=0, callback=fits_int64, help="Seed for clustering and training."
        ),
    ] = 0,
    executor: ExecutorOpt = Executor.local,
    address: AddressOpt = None,
    workers: WorkersOpt = 2,
    device: DeviceOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    json_mode: JsonOpt = False,
) -> None:
    """Select anchors among the users in --data, train one LoRA per anchor, publish a version.

    Example:

        mta bank build movie_tagging --data users.json --anchors 3 --epochs 1
        mta bank build movie_tagging --data users.json --anchors 50 --executor ray --address auto
    """
    from mta.registry.service import build_bank

    out = Output(json_mode)
    with registry_context(ctx) as registry, StageProgress() as progress:
        registry.device = device
        bank = build_bank(
            registry,
            task=task,
            data_path=data,
            anchors=anchors,
            epochs=epochs,
            rank=rank,
            anchor_data=anchor_data.value,
            min_history=min_history,
            lr=lr,
            base_model=base_model,
            embedder=embedder,
            seed=seed,
            progress=progress,
            executor=executor.value,
            address=address,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
        )
    _render_bank(out, bank.to_dict(), verb="built")


@bank_app.command("push")
def bank_push(
    ctx: typer.Context,
    task: TaskArg,
    adapter_dirs: Annotated[
        list[Path],
        typer.Argument(help="PEFT LoRA folders; each folder's name is its anchor id."),
    ],
    profiles: Annotated[
        Path,
        typer.Option(
            "--profiles", help="Per-user JSON holding one entry whose user_id is each folder name."
        ),
    ],
    base_model: BaseModelOpt = None,
    embedder: EmbedderOpt = None,
    json_mode: JsonOpt = False,
) -> None:
    """Publish externally trained LoRAs (PEFT or LLaMA-Factory output) as a new bank version.

    Example:

        mta bank push movie_tagging runs/u17 runs/u42 --profiles users.json
    """
    from mta.registry.service import push_bank

    out = Output(json_mode)
    with registry_context(ctx) as registry:
        bank = push_bank(
            registry,
            task=task,
            adapter_dirs=adapter_dirs,
            profiles_path=profiles,
            base_model=base_model,
            embedder=embedder,
        )
    _render_bank(out, bank.to_dict(), verb="pushed")


@bank_app.command("list")
def bank_list(
    ctx: typer.Context,
    json_mode: JsonOpt = False,
) -> None:
    """List every bank version of every task.

    Example:

        mta bank list --json
    """
    from mta.registry.service import list_banks

    out = Output(json_mode)
    with registry_context(ctx) as registry:
        banks = [bank.to_dict() for bank in list_banks(registry)]
    if json_mode:
        out.emit_json(banks)
        return
    if not banks:
        out.result("no banks yet; create one with `mta bank build` or `mta bank push`")
        return
    out.table(
        ["Task", "Version", "Aliases", "Anchors", "Rank", "Source", "Base model", "Created"],
        (
            [
                b["task"],
                b["version"],
                ", ".join(b["aliases"]),
                b["num_anchors"],
                b["rank"],
                b["source"],
                short_name(b["base_model"]),
                str(b["created_at"])[:16].replace("T", " "),
            ]
            for b in banks
        ),
        title="Banks",
    )


def short_name(model: str) -> str:
    """The last path component of a local model or embedder path; hub ids and aliases as is."""
    return Path(model).name if model.startswith(("/", ".", "~")) else model


@bank_app.command("show")
def bank_show(
    ctx: typer.Context,
    task: TaskArg,
    version: Annotated[
        int | None,
        typer.Option(
            "--version", min=1, callback=fits_int64, help="Version number (default: latest)."
        ),
    ] = None,
    alias: Annotated[
        str | None, typer.Option("--alias", help="Alias to resolve, e.g. prod.")
    ] = None,
    json_mode: JsonOpt = False,
) -> None:
    """Show one bank version and its anchors (the latest unless --version or --alias).

    Example:

        mta bank show movie_tagging --alias prod
    """
    from mta.registry.service import get_bank

    if version is not None and alias is not None:
        raise typer.BadParameter("give --version or --alias, not both")
    ref = alias if alias is not None else (str(version) if version is not None else None)
    out = Output(json_mode)
    with registry_context(ctx) as registry:
        detail = get_bank(registry, task, ref).to_dict()
    if json_mode:
        out.emit_json(detail)
        return
    anchors = detail.get("anchors") or []
    summary = {k: v for k, v in detail.items() if k != "anchors"}
    out.record(summary, title=f"Bank {detail.get('task')} v{detail.get('version')}")
    out.table(
        ["Anchor", "History", "Cluster size", "Adapter bytes", "Adapter blob"],
        (
            [
                a.get("anchor_id"),
                a.get("history_length"),
                a.get("cluster_size"),
                a.get("adapter_bytes"),
                str(a.get("adapter_blob", ""))[:12],
            ]
            for a in anchors
        ),
        title="Anchors",
    )


@bank_app.command("alias")
def bank_alias(
    ctx: typer.Context,
    task: TaskArg,
    version: Annotated[
        int, typer.Argument(min=1, callback=fits_int64, help="Existing version number.")
    ],
    name: Annotated[str, typer.Argument(help="Alias to point at it, e.g. prod.")],
    json_mode: JsonOpt = False,
) -> None:
    """Point an alias (a mutable name such as prod) at a bank version.

    Example:

        mta bank alias movie_tagging 2 prod
    """
    from mta.registry.service import set_alias

    out = Output(json_mode)
    with registry_context(ctx) as registry:
        bank = set_alias(registry, task, version, name).to_dict()
    out.result(f"{task}: alias {name!r} -> version {version}", **bank)


def _render_bank(out: Output, bank: dict[str, Any], *, verb: str) -> None:
    """Print a newly published bank version."""
    if out.json_mode:
        out.emit_json(bank)
        return
    out.record(
        {k: v for k, v in bank.items() if k != "anchors"},
        title=f"{verb.capitalize()} bank {bank.get('task')} v{bank.get('version')}",
    )
