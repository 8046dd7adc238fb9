"""`mta publish` through `main`: JSON output, byte equality with `user export`, --watch, errors."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import TASK, CliEnv, Mta, movie_user, ok, write_users

SERVED = "HuggingFaceTB/SmolLM2-135M-Instruct"


def add_fused(cli_env: CliEnv, mta: Mta, user_id: str, *, fuse: bool = True) -> None:
    """Add a user through the CLI (and fuse them)."""
    path = write_users(cli_env.root / f"{user_id}.json", movie_user(user_id, 6, seed=len(user_id)))
    ok(mta("user", "add", user_id, "--bank", TASK, "--profile", path, "--json"))
    if fuse:
        ok(mta("user", "fuse", user_id, "--json"))


def files(folder: Path) -> dict[str, bytes]:
    """File name -> bytes."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_publish_matches_user_export_and_skips_unchanged(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict
) -> None:
    add_fused(cli_env, mta, "alice")
    add_fused(cli_env, mta, "bob@example.org")
    out = cli_env.root / "loras"
    argv = ["--served-model-name", SERVED, "--users", "alice", "--users", "bob@example.org"]
    first = ok(mta("publish", out, *argv, "--bank", TASK, "--json"))
    assert first["written"] == ["alice", "bob@example.org"] and first["manifest_written"]
    for user_id in ("alice", "bob@example.org"):
        exported = cli_env.root / "export" / user_id
        ok(
            mta(
                "user",
                "export",
                user_id,
                "--out",
                exported,
                "--served-model-name",
                SERVED,
                "--json",
            )
        )
        assert files(out / user_id) == files(exported)

    again = ok(mta("publish", out, "--served-model-name", SERVED, "--json"))
    assert again["written"] == [] and again["unchanged"] == ["alice", "bob@example.org"]
    # Comma lists work too; a "[/red]" in the target is a path, not rich markup to choke on.
    marked = cli_env.root / "loras[/red]"
    human = mta(
        "publish", marked, "--served-model-name", SERVED, "--users", "alice,bob@example.org"
    )
    assert human.code == 0, human.stderr
    assert "Published" in human.stdout and "file://" in human.stdout
    assert files(marked / "alice") == files(out / "alice")


def test_publish_watch_rounds_print_json_lines(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict
) -> None:
    add_fused(cli_env, mta, "alice")
    add_fused(cli_env, mta, "dave", fuse=False)
    result = mta("publish", cli_env.root / "loras", "--watch", "0.01", "--rounds", "2", "--json")
    assert result.code == 0, result.stderr
    rounds = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["written"] for r in rounds] == [["alice"], []]
    assert [r["unchanged"] for r in rounds] == [[], ["alice"]]
    assert "no recipe yet" in result.stderr and "dave" in result.stderr


def test_publish_errors_are_one_line(cli_env: CliEnv, mta: Mta, pushed_bank: dict) -> None:
    add_fused(cli_env, mta, ".hidden")
    out = cli_env.root / "loras"
    refused = mta("publish", out, "--users", ".hidden")
    assert refused.code == 1
    assert refused.error_lines() == [
        "Error: user id '.hidden' cannot be published: ids starting with '.' are hidden "
        "folders and reserved for staging"
    ]
    assert mta("publish", out, "--users", "ghost").code == 1
    assert mta("publish", "gs://bucket/x").code == 1
    assert mta("publish", out, "--dtype", "fp8").error_lines() == [
        "Error: unknown dtype 'fp8'; valid: bf16, fp16, fp32"
    ]
    warned = mta("publish", out, "--bank", TASK)
    assert warned.code == 0 and ".hidden" in warned.stderr
