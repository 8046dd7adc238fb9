"""`mta data`: fetch the official LaMP files and convert them to the per-user format."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from mta.cli.options import JsonOpt
from mta.cli.output import Output, log

data_app = typer.Typer(
    help="LaMP data: download the official files, convert them to the per-user format.",
    no_args_is_help=True,
)


@data_app.command("fetch")
def data_fetch(
    task: Annotated[str, typer.Option("--task", help="LaMP task, e.g. movie_tagging.")],
    dest: Annotated[
        Path | None,
        typer.Option("--dest", help="Data root (default: $MTA_LAMP_DIR, else ./lamp)."),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Official split: dev or train.")] = "dev",
    json_mode: JsonOpt = False,
) -> None:
    """Download a task's official questions and outputs (needs internet), then convert them.

    Writes <dest>/<task>/{<split>_questions.json, <split>_outputs.json, users.json,
    manifest.json}. No checksums are published for these files: the manifest records the
    sha256 of what was downloaded ("unpinned"), and later fetches are verified against it.
    """
    from mta.lamp_fetch import fetch_task

    result = fetch_task(task, dest, split=split, progress=_progress_logger())
    out = Output(json_mode=json_mode)
    if json_mode:
        out.emit_json(
            {
                "task": result.task,
                "split": result.split,
                "users_path": str(result.users_path),
                "users": result.n_users,
                "files": [f.__dict__ for f in result.files],
            }
        )
        return
    out.table(
        ["file", "bytes", "sha256", "status"],
        [[f.name, f.bytes, f.sha256, f.status] for f in result.files],
        title=f"LaMP {task} ({split})",
    )
    out.result(f"{result.n_users} users written to {result.users_path}")


def _progress_logger() -> Callable[[str, int, int], None]:
    """Log each file once when its download completes."""
    seen: set[str] = set()

    def report(name: str, done: int, total: int) -> None:
        if total and done >= total and name not in seen:
            seen.add(name)
            log(f"downloaded {name} ({done} bytes)")

    return report


@data_app.command("convert")
def data_convert(
    questions: Annotated[Path, typer.Argument(help="Official <split>_questions.json.")],
    outputs: Annotated[
        Path | None, typer.Argument(help="Official <split>_outputs.json (omit for the test split).")
    ] = None,
    out_path: Annotated[Path, typer.Option("--out", help="Per-user JSON to write.")] = Path(
        "users.json"
    ),
    json_mode: JsonOpt = False,
) -> None:
    """Convert official LaMP questions (+ outputs) into the per-user format."""
    from mta.lamp_data import convert_official, save_users

    users = convert_official(questions, outputs)
    save_users(users, out_path)
    Output(json_mode=json_mode).result(
        f"{len(users)} users written to {out_path}", users=len(users), path=str(out_path)
    )
