"""`mta publish` through `main`: JSON output, byte equality with `user export`, --watch, errors."""

from __future__ import annotations

import inspect
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


def current(out: Path, user_id: str) -> Path:
    """The user's published folder, as the manifest names it."""
    listed = json.loads((out / "mta-manifest.json").read_text())["users"]
    return out / listed[user_id]["name"]


def test_publish_matches_user_export_and_skips_unchanged(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict
) -> None:
    add_fused(cli_env, mta, "alice")
    add_fused(cli_env, mta, "bob@example.org")
    out = cli_env.root / "loras"
    argv = ["--served-model-name", SERVED, "--dtype", "fp32"]  # `user export` writes fp32
    first = ok(
        mta("publish", out, *argv, "--users", "alice", "--users", "bob@example.org", "--json")
    )
    assert first["written"] == ["alice", "bob@example.org"] and first["manifest_written"]
    for user_id in ("alice", "bob@example.org"):
        exported = cli_env.root / "export" / user_id
        export = ok(
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
        assert files(current(out, user_id)) == files(exported)
        assert first["names"][user_id] == current(out, user_id).name
        assert export["base_model"] == export["base_weights"] and len(export["base_sha256"]) == 64

    again = ok(mta("publish", out, *argv, "--json"))
    assert again["written"] == [] and again["unchanged"] == ["alice", "bob@example.org"]
    # Comma lists work too; a "[/red]" in the target is a path, not rich markup to choke on.
    marked = cli_env.root / "loras[/red]"
    human = mta("publish", marked, *argv, "--users", "alice,bob@example.org")
    assert human.code == 0, human.stderr
    assert "Published" in human.stdout and "file://" in human.stdout
    assert files(current(marked, "alice")) == files(current(out, "alice"))


def test_publish_defaults_to_fp16_and_prints_the_vllm_rank(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict
) -> None:
    from mta.cli.publish import publish_command
    from mta.registry.service import PublishRequest

    defaults = inspect.signature(publish_command).parameters
    request = PublishRequest()
    assert defaults["dtype"].default == request.dtype == "fp16"
    assert defaults["keep_previous"].default == request.keep_previous

    add_fused(cli_env, mta, "alice")
    add_fused(cli_env, mta, "bob")
    ids = cli_env.root / "ids.txt"
    ids.write_text("# served today\nbob\n")
    out = cli_env.root / "loras"
    result = ok(mta("publish", out, "--from", ids, "--json"))
    assert result["written"] == ["bob"] and result["dtype"] == "fp16"
    assert (result["rank"], result["max_lora_rank"]) == (16, 16)  # two rank-8 anchors
    entry = json.loads((out / "mta-manifest.json").read_text())["users"]["bob"]
    assert (entry["rank"], entry["dtype"], entry["max_lora_rank"]) == (16, "fp16", 16)
    human = mta("publish", out, "--active-since", "10m", "--keep-previous", "0")
    assert human.code == 0, human.stderr
    assert "vLLM --max-lora-rank" in human.stdout and "fp16 / 16" in human.stdout
    listed = json.loads((out / "mta-manifest.json").read_text())["users"]
    assert sorted(listed) == ["alice", "bob"]  # alice was fused minutes ago
    bad = mta("publish", out, "--active-since", "soon")
    assert bad.code == 2 and "not a duration" in bad.stderr


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


def test_publish_warns_in_one_line_for_a_gguf_base_under_a_hub_name(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict
) -> None:
    from sqlalchemy import create_engine, text

    gguf = cli_env.root / "model.Q4_1.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    engine = create_engine(f"sqlite:///{cli_env.root / 'registry.db'}")
    with engine.begin() as connection:  # as if the bank had been trained on a GGUF
        connection.execute(text("UPDATE banks SET base_model = :p"), {"p": str(gguf)})
    engine.dispose()
    add_fused(cli_env, mta, "alice")
    result = mta("publish", cli_env.root / "loras", "--served-model-name", SERVED, "--json")
    assert result.code == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "dequantized" in line]
    assert len(warned) == 1 and warned[0].startswith("Warning: 1 user(s) trained on")
    assert result.json()["warnings"] == [warned[0].removeprefix("Warning: ")]


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
    assert mta("publish", out, "--from", cli_env.root / "missing.txt").code == 1
    assert mta("publish", "gs://bucket/x").code == 1
    assert mta("publish", out, "--dtype", "fp8").error_lines() == [
        "Error: unknown dtype 'fp8'; valid: bf16, fp16, fp32"
    ]
    assert mta("publish", out, "--keep-previous", "-1").code == 2
    assert mta("publish", out, "--max-bytes", "0").code == 2
    warned = mta("publish", out, "--bank", TASK)
    assert warned.code == 0 and ".hidden" in warned.stderr


def test_publish_gguf_adds_the_llama_cpp_file_under_its_own_name(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict
) -> None:
    add_fused(cli_env, mta, "alice")
    peft_out, gguf_out = cli_env.root / "peft", cli_env.root / "gguf"
    peft = ok(mta("publish", peft_out, "--json"))
    gguf = ok(mta("publish", gguf_out, "--format", "gguf", "--json"))
    # Other bytes, so another name; the PEFT files themselves are the same.
    assert gguf["names"]["alice"] != peft["names"]["alice"]
    with_gguf = files(current(gguf_out, "alice"))
    assert sorted(with_gguf) == sorted([*files(current(peft_out, "alice")), "adapter_model.gguf"])
    assert {k: v for k, v in with_gguf.items() if k != "adapter_model.gguf"} == files(
        current(peft_out, "alice")
    )
    assert with_gguf["adapter_model.gguf"][:4] == b"GGUF"
    entry = json.loads((gguf_out / "mta-manifest.json").read_text())["users"]["alice"]
    assert entry["format"] == "gguf" and entry["bytes"] == sum(map(len, with_gguf.values()))
    refused = mta("publish", gguf_out, "--format", "gguf", "--dtype", "bf16")
    assert refused.error_lines() == ["Error: a GGUF adapter is fp32 or fp16, not bf16"]
    assert mta("publish", gguf_out, "--format", "onnx").error_lines() == [
        "Error: unknown publish format 'onnx'; valid: peft, gguf"
    ]
