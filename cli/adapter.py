"""`mta adapter`: work on PEFT LoRA folders directly (no registry, no base model)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated

import typer

from mta.cli.options import JsonOpt, fits_int64
from mta.cli.output import Output

adapter_app = typer.Typer(
    help="Fuse and inspect PEFT LoRA folders directly; no registry or base model needed.",
    no_args_is_help=True,
)

RECIPE_NAME = "mta_fusion.json"


def parse_weights(text: str | None, count: int) -> list[float]:
    """Weights from ``"0.6,0.4"``; uniform ``1/count`` when ``text`` is None.

    Raises:
        ValueError: a part that is not a finite number.
    """
    if text is None:
        return [1.0 / count] * count
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"invalid --weights {text!r}: expected comma-separated numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"invalid --weights {text!r}: weights must be finite")
    return values


def _folder_bytes(folder: Path) -> int:
    """Bytes of the files directly in `folder`."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


AnchorDirsArg = Annotated[
    list[Path],
    typer.Argument(help="PEFT LoRA folders to fuse (the anchors).", metavar="DIR"),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights", "-w", help="Comma-separated weights, one per folder (default: uniform)."
    ),
]
MethodOpt = Annotated[
    str, typer.Option("--method", "-m", help="cat (exact), svd (compressed) or factorwise.")
]
RankOpt = Annotated[
    int | None,
    typer.Option("--rank", "-r", min=1, callback=fits_int64, help="Target rank for --method svd."),
]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="Stored dtype: fp32, fp16 or bf16.")]


@adapter_app.command("fuse")
def adapter_fuse(
    adapters: AnchorDirsArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the fused PEFT adapter.")],
    weights: WeightsOpt = None,
    method: MethodOpt = "cat",
    rank: RankOpt = None,
    dtype: DtypeOpt = "fp32",
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Fuse LoRA folders into one PEFT adapter: exact by default (rank = sum of ranks).

    Example: mta adapter fuse anchors/a anchors/b --weights 0.6,0.4 --out fused
    """
    from mta.dtypes import torch_dtype
    from mta.fusion import fuse, get_fusion
    from mta.peft_folder import check_out_folder, save_peft_folder_atomically
    from mta.peft_io import load_peft_adapter

    started = time.perf_counter()
    get_fusion(method)  # fail on a bad name before reading any file
    tensor_dtype = torch_dtype(dtype)
    values = parse_weights(weights, len(adapters))
    if rank is not None and method != "svd":
        raise ValueError(f"--rank applies to --method svd only ({method!r} fixes the rank)")
    check_out_folder(out, force)
    loaded = [load_peft_adapter(path) for path in adapters]
    fuse_started = time.perf_counter()
    fused = fuse(loaded, values, method=method, rank=rank)
    fuse_seconds = time.perf_counter() - fuse_started
    recipe = {
        "anchors": [str(path) for path in adapters],
        "weights": values,
        "method": method,
        "rank": rank,
    }
    save_peft_folder_atomically(
        fused, out, dtype=tensor_dtype, extra_json={RECIPE_NAME: recipe}, force=force
    )
    summary = {
        "out": str(out),
        "anchors": [str(path) for path in adapters],
        "weights": values,
        "method": method,
        "rank": max(fused.ranks().values()),
        "ranks": sorted(set(fused.ranks().values())),
        "modules": len(fused.modules),
        "params": fused.num_params(),
        "dtype": dtype,
        "bytes": _folder_bytes(out),
        "fuse_seconds": round(fuse_seconds, 4),
        "total_seconds": round(time.perf_counter() - started, 4),
    }
    Output(json_output).record(summary, title="fused adapter")


@adapter_app.command("inspect")
def adapter_inspect(
    path: Annotated[Path, typer.Argument(help="A PEFT LoRA folder.", metavar="DIR")],
    modules: Annotated[
        bool, typer.Option("--modules", help="List every module instead of a summary.")
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Show a LoRA folder's modules, ranks, scales, parameters and bytes.

    Example: mta adapter inspect fused --json
    """
    from mta.peft_io import load_peft_adapter

    adapter = load_peft_adapter(path)
    out = Output(json_output)
    if modules:
        rows = [
            (
                name,
                m.r,
                m.in_features,
                m.out_features,
                m.scale,
                str(m.A.dtype).removeprefix("torch."),
            )
            for name, m in adapter.modules.items()
        ]
        out.table(["module", "rank", "in", "out", "scale", "dtype"], rows, title=str(path))
        return
    scales = sorted({m.scale for m in adapter.modules.values()})
    dtypes = sorted({str(m.A.dtype).removeprefix("torch.") for m in adapter.modules.values()})
    out.record(
        {
            "path": str(path),
            "base_model": adapter.base_model,
            "modules": len(adapter.modules),
            "target_modules": adapter.target_modules(),
            "rank": max(adapter.ranks().values()),
            "ranks": sorted(set(adapter.ranks().values())),
            "scales": scales,
            "params": adapter.num_params(),
            "dtype": ",".join(dtypes),
            "bytes": _folder_bytes(Path(path)),
        },
        title="adapter",
    )
