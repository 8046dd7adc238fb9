"""`mta user`: add a user, fuse their anchors, adapt a stack, export, show, list, delete.

`add`, `fuse` and `adapt` take one user or many (a bulk job); they live in `user_add.py`,
`user_fuse.py` and `user_adapt.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mta.cli.options import JsonOpt, fits_int64, registry_context
from mta.cli.output import Output
from mta.cli.user_adapt import user_adapt
from mta.cli.user_add import user_add
from mta.cli.user_fuse import user_fuse
from mta.cli.user_recode import user_recode
from mta.cli.user_render import render_recipe

user_app = typer.Typer(
    help="Users: fuse the nearest anchors, train a tiny stack on top, export one PEFT LoRA.",
    no_args_is_help=True,
)

UserArg = Annotated[str, typer.Argument(help="User id.", show_default=False)]

user_app.command("add")(user_add)
user_app.command("fuse")(user_fuse)
user_app.command("adapt")(user_adapt)
user_app.command("recode")(user_recode)


@user_app.command("export")
def user_export(
    ctx: typer.Context,
    user_id: UserArg,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the PEFT LoRA into.")],
    max_rank: Annotated[
        int | None,
        typer.Option(
            "--max-rank",
            min=1,
            callback=fits_int64,
            help="Compress to this rank (SVD) for capped engines.",
        ),
    ] = None,
    served_model_name: Annotated[
        str | None,
        typer.Option(
            "--served-model-name",
            help="Write NAME as base_model_name_or_path instead of the bank's base model "
            "(what `mta publish --served-model-name` writes).",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="peft (the PEFT folder), or gguf: the PEFT folder plus adapter_model.gguf, "
            "a llama.cpp LoRA of the same deltas (fp32, or fp16 with --dtype fp16).",
        ),
    ] = "peft",
    dtype: Annotated[
        str, typer.Option("--dtype", help="Precision of the written tensors: fp32, fp16, bf16.")
    ] = "fp32",
    json_mode: JsonOpt = False,
) -> None:
    """Write fused + stack as one standard PEFT LoRA that PEFT, vLLM or LoRAX can load.

    Example:

        mta user export alice --out adapters/alice --max-rank 16
    """
    from mta.gguf_lora import GGUF_NAME
    from mta.registry.service import adapter_identity, export_user

    if fmt not in ("peft", "gguf"):
        raise typer.BadParameter(f"{fmt!r}; valid: gguf, peft", param_hint="--format")
    check_out_dir(out_dir)
    out = Output(json_mode)
    options = {"max_rank": max_rank, "dtype": dtype, "base_model_name": served_model_name}
    with registry_context(ctx) as registry:
        identity = adapter_identity(registry, user_id)
        export = export_user(registry, identity, out_dir, **options, gguf=fmt == "gguf").to_dict()
        if fmt == "gguf":
            export["gguf"] = str(out_dir / GGUF_NAME)
    if json_mode:
        out.emit_json(export)
        return
    out.record(export, title=f"Exported {user_id}")
    out.result(peft_snippet(out_dir, _exported_base_model(out_dir)))


def check_out_dir(out_dir: Path) -> None:
    """Refuse an --out that cannot become a folder, before any work is done.

    The first missing folder on the way is created and removed again (or, when --out
    exists, a file is created in it and removed): only trying tells whether the
    filesystem lets us (read-only mounts, /proc, permissions).

    Raises:
        InvalidInputError: `out_dir`, or a folder above it, exists and is not a folder, or
            the folder cannot be created or written.
    """
    import tempfile

    from mta.registry.errors import InvalidInputError

    missing = None
    for path in (out_dir, *out_dir.parents):
        if path.exists():
            if not path.is_dir():
                raise InvalidInputError(f"--out {out_dir}: {path} exists and is not a folder")
            break
        missing = path
    try:
        if missing is None:
            with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".mta-probe-"):
                pass
        else:
            missing.mkdir()
            missing.rmdir()
    except OSError as error:
        what = f"create {missing}" if missing is not None else f"write into {out_dir}"
        reason = (error.strerror or str(error)).lower()
        raise InvalidInputError(f"--out {out_dir}: cannot {what} ({reason})") from None


def _exported_base_model(adapter_dir: Path) -> str | None:
    """The base_model_name_or_path an exported adapter_config.json names, if readable."""
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return value if isinstance(value, str) and value else None


def peft_snippet(adapter_dir: Path, base_model: str | None) -> str:
    """Three lines of Python that load an exported adapter with transformers + PEFT."""
    base = _base_model_load_expr(base_model)
    return (
        "Load it with PEFT:\n"
        "  from transformers import AutoModelForCausalLM; from peft import PeftModel\n"
        f"  base = {base}\n"
        f"  model = PeftModel.from_pretrained(base, {str(adapter_dir)!r})"
    )


def _base_model_load_expr(base_model: str | None) -> str:
    """`AutoModelForCausalLM.from_pretrained(...)` for a hub id, a folder or a GGUF file."""
    from mta.base_model import resolve_base_model

    try:
        location = resolve_base_model(base_model)
    except Exception:  # noqa: BLE001 - the snippet is advice; fall back to the recorded name
        location = base_model or "smollm2"
    path = Path(location)
    if path.suffix == ".gguf":
        # transformers loads GGUF by folder + file name and dequantizes it.
        return (
            f"AutoModelForCausalLM.from_pretrained({str(path.parent)!r}, gguf_file={path.name!r})"
        )
    return f"AutoModelForCausalLM.from_pretrained({location!r})"


@user_app.command("show")
def user_show(
    ctx: typer.Context,
    user_id: UserArg,
    json_mode: JsonOpt = False,
) -> None:
    """Show a user: bank, recipe, stack and the bytes they cost.

    Example:

        mta user show alice --json
    """
    from mta.registry.service import get_user

    out = Output(json_mode)
    with registry_context(ctx) as registry:
        detail = get_user(registry, user_id).to_dict()
    if json_mode:
        out.emit_json(detail)
        return
    recipe, stack = detail.get("recipe"), detail.get("stack")
    summary = {k: v for k, v in detail.items() if k not in ("recipe", "stack")}
    if stack:
        summary["stack"] = (
            f"#{stack.get('stack_id')} rank {stack.get('rank')} {stack.get('dtype')}, "
            f"{stack.get('bytes')} bytes, final loss {stack.get('final_loss')}"
            + (" (STALE: bank has a newer version)" if stack.get("stale") else "")
        )
    else:
        summary["stack"] = "none (run: mta user adapt)"
    out.record(summary, title=f"User {user_id}")
    if recipe:
        render_recipe(out, recipe)


@user_app.command("list")
def user_list(
    ctx: typer.Context,
    task: Annotated[str | None, typer.Option("--task", help="Only users of this task.")] = None,
    json_mode: JsonOpt = False,
) -> None:
    """List users.

    Example:

        mta user list --task movie_tagging
    """
    from mta.registry.service import list_users

    out = Output(json_mode)
    with registry_context(ctx) as registry:
        users = [user.to_dict() for user in list_users(registry, task=task)]
    if json_mode:
        out.emit_json(users)
        return
    if not users:
        out.result("no users yet; add one with `mta user add`")
        return
    out.table(
        ["User", "Task", "Bank version", "Profile items", "Created"],
        (
            [
                u["user_id"],
                u["task"],
                u["bank_version"],
                u["profile_items"],
                str(u["created_at"])[:16].replace("T", " "),
            ]
            for u in users
        ),
        title="Users",
    )


@user_app.command("delete")
def user_delete(
    ctx: typer.Context,
    user_id: UserArg,
    drop_anchor: Annotated[
        bool,
        typer.Option(
            "--drop-anchor",
            help="Also erase the anchors trained on this user's history from every bank "
            "version (users fused with them must fuse again). Without it such a user is refused.",
        ),
    ] = False,
    json_mode: JsonOpt = False,
) -> None:
    """Delete a user and every byte stored for them (profile, embedding, recipes, stacks, cache).

    The deletion is recorded first: if it is interrupted, run the same command again (or
    `mta gc`) to finish it.

    Example:

        mta user delete alice
        mta user delete anchor-user-7 --drop-anchor
    """
    from mta.registry.service import delete_user

    out = Output(json_mode)
    with registry_context(ctx) as registry:
        result = delete_user(registry, user_id, drop_anchors=drop_anchor).to_dict()
    message = (
        f"deleted user {user_id!r}: {result['rows_deleted']} row(s), "
        f"{len(result['blobs_deleted'])} blob(s), {result['bytes_freed']} bytes freed"
    )
    if result["anchors_dropped"]:
        message += f"; erased anchor(s) {', '.join(result['anchors_dropped'])}"
    if result["users_to_refuse"]:
        message += f"; users to fuse again: {', '.join(result['users_to_refuse'])}"
    out.result(message, **result)
