"""Every registry command's happy path, through `main`, with `--json` parsed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    ANCHOR_IDS,
    TASK,
    CliEnv,
    Mta,
    movie_user,
    ok,
    push_bank_argv,
    write_users,
)


def test_init_is_idempotent_and_reports_locations(cli_env: CliEnv, mta: Mta) -> None:
    info = ok(mta("init", "--json"))
    assert info["db_url"] == cli_env.db_url
    assert info["store_url"] == cli_env.store_url
    assert ok(mta("bank", "list", "--json")) == []


def test_bank_push_list_show_alias(cli_env: CliEnv, mta: Mta, pushed_bank: dict) -> None:
    assert pushed_bank["task"] == TASK
    assert pushed_bank["version"] == 1
    assert pushed_bank["num_anchors"] == len(ANCHOR_IDS)
    assert pushed_bank["rank"] == 8

    listed = ok(mta("bank", "list", "--json"))
    assert [(b["task"], b["version"]) for b in listed] == [(TASK, 1)]

    detail = ok(mta("bank", "show", TASK, "--json"))
    assert sorted(a["anchor_id"] for a in detail["anchors"]) == sorted(ANCHOR_IDS)
    assert all(a["adapter_bytes"] > 0 for a in detail["anchors"])

    aliased = ok(mta("bank", "alias", TASK, "1", "prod", "--json"))
    assert "prod" in aliased["aliases"]
    assert ok(mta("bank", "show", TASK, "--alias", "prod", "--json"))["version"] == 1
    assert ok(mta("bank", "show", TASK, "--version", "1", "--json"))["version"] == 1


def test_user_lifecycle(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict, new_user_file: Path, tiny_model_dir: Path
) -> None:
    user = ok(mta("user", "add", "alice", "--bank", TASK, "--profile", new_user_file, "--json"))
    assert (user["user_id"], user["task"], user["bank_version"]) == ("alice", TASK, 1)
    assert user["profile_items"] == 6

    recipe = ok(mta("user", "fuse", "alice", "--top-k", "2", "--json"))
    anchors = recipe["anchors"]
    assert len(anchors) == 2
    assert {a["anchor_id"] for a in anchors} <= set(ANCHOR_IDS)
    assert math.isclose(sum(a["weight"] for a in anchors), 1.0, rel_tol=1e-6)
    # Proportional rule: weights follow the (positive) cosine scores, never swapped.
    scores = [max(a["score"], 0.0) for a in anchors]
    if sum(scores) > 0:
        for a, s in zip(anchors, scores, strict=True):
            assert math.isclose(a["weight"], s / sum(scores), rel_tol=1e-5, abs_tol=1e-7)
    assert (recipe["method"], recipe["weight_rule"]) == ("cat", "proportional")

    stack = ok(mta("user", "adapt", "alice", "--shots", "3", "--epochs", "1", "--json"))
    assert (stack["user_id"], stack["rank"], stack["dtype"]) == ("alice", 1, "int8")
    assert stack["bytes"] > 0 and stack["recipe_id"] == recipe["recipe_id"]
    assert not stack["stale"]

    out_dir = cli_env.root / "export"
    export = ok(mta("user", "export", "alice", "--out", out_dir, "--json"))
    assert Path(export["path"]) == out_dir
    assert (out_dir / "adapter_config.json").is_file()
    assert (out_dir / "adapter_model.safetensors").is_file()
    # Exact export: fused (2 x rank 8) + stack (rank 1).
    assert export["rank"] == 2 * 8 + 1
    _assert_peft_loads(tiny_model_dir, out_dir)

    capped = ok(mta("user", "export", "alice", "--out", cli_env.root / "x4", "--max-rank", "4",
                    "--json"))  # fmt: skip
    assert capped["rank"] == 4 and capped["max_rank"] == 4

    shown = ok(mta("user", "show", "alice", "--json"))
    assert shown["recipe"]["recipe_id"] == recipe["recipe_id"]
    assert shown["stack"]["stack_id"] == stack["stack_id"]
    assert shown["bytes"] > 0
    assert [u["user_id"] for u in ok(mta("user", "list", "--json"))] == ["alice"]
    assert ok(mta("user", "list", "--task", "other", "--json")) == []

    report = ok(mta("storage", "report", "--json"))
    for key in ("total_bytes", "by_kind", "users", "per_user_bytes", "stale_stacks",
                "oppu_equivalent_bytes", "ratio_vs_oppu"):  # fmt: skip
        assert key in report, key
    assert report["users"] == 1
    assert set(report["per_user_bytes"]) >= {"mean", "p50", "p99"}
    assert report["stale_stacks"] == 0

    assert ok(mta("fsck", "--json"))["ok"] is True

    deleted = ok(mta("user", "delete", "alice", "--json"))
    assert deleted["user_id"] == "alice" and deleted["bytes_freed"] > 0
    assert mta("user", "show", "alice").code == 1
    assert ok(mta("storage", "report", "--json"))["users"] == 0
    assert ok(mta("fsck", "--json"))["ok"] is True


def _assert_peft_loads(base_dir: Path, adapter_dir: Path) -> None:
    """The exported folder loads with plain transformers + PEFT and changes the output."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        before = base(ids).logits.clone()
        model = PeftModel.from_pretrained(base, str(adapter_dir))
        after = model(ids).logits
    assert torch.isfinite(after).all()
    assert not torch.allclose(before, after)


def test_stack_goes_stale_when_a_new_bank_version_lands(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict, new_user_file: Path,
    tiny_shapes: dict[str, tuple[int, int]],
) -> None:  # fmt: skip
    ok(mta("user", "add", "alice", "--bank", TASK, "--profile", new_user_file, "--json"))
    ok(mta("user", "adapt", "alice", "--shots", "2", "--epochs", "1", "--json"))
    assert ok(mta(*push_bank_argv(cli_env, tiny_shapes)))["version"] == 2
    assert ok(mta("user", "show", "alice", "--json"))["stack"]["stale"] is True
    assert ok(mta("storage", "report", "--json"))["stale_stacks"] == 1


def test_adapt_with_more_shots_than_history_uses_every_item(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict, new_user_file: Path
) -> None:
    ok(mta("user", "add", "alice", "--bank", TASK, "--profile", new_user_file, "--json"))
    stack = ok(mta("user", "adapt", "alice", "--shots", "50", "--epochs", "1", "--json"))
    assert stack["train_config"]["shot_indices"] == list(range(6))


def test_bank_build_from_data(cli_env: CliEnv, mta: Mta) -> None:
    data = write_users(cli_env.root / "users.json", [movie_user(f"u{i}", 8) for i in range(6)])
    bank = ok(mta(
        "bank", "build", TASK, "--data", data, "--anchors", "2", "--epochs", "1",
        "--rank", "2", "--min-history", "4", "--base-model", cli_env.base_model,
        "--embedder", cli_env.embedder, "--json",
    ))  # fmt: skip
    assert (bank["task"], bank["version"], bank["num_anchors"]) == (TASK, 1, 2)
    assert bank["rank"] == 2 and bank["source"] == "build"
    assert bank["anchor_data"] == "cluster"
    assert ok(mta("fsck", "--json"))["ok"] is True
    paper = ok(mta(
        "bank", "build", TASK, "--data", data, "--anchors", "2", "--epochs", "1",
        "--rank", "2", "--min-history", "4", "--base-model", cli_env.base_model,
        "--embedder", cli_env.embedder, "--anchor-data", "user", "--json",
    ))  # fmt: skip
    assert (paper["version"], paper["anchor_data"]) == (2, "user")


def test_gc_reclaims_only_unreferenced_blobs(cli_env: CliEnv, mta: Mta, pushed_bank: dict) -> None:
    from mta.storage import open_store

    store = open_store(cli_env.store_url)
    orphan = store.put_bytes(b"left behind by a crash")
    before = cli_env.dump()

    dry = ok(mta("gc", "--grace", "0", "--dry-run", "--json"))
    assert dry["deleted"] == [orphan] and dry["dry_run"] is True
    assert cli_env.dump() == before

    assert ok(mta("gc", "--json"))["deleted"] == []  # inside the default grace period
    done = ok(mta("gc", "--grace", "0", "--json"))
    assert done["deleted"] == [orphan]
    assert not store.exists(orphan)
    assert ok(mta("fsck", "--json"))["orphans"] == []
    assert ok(mta("storage", "gc", "--grace", "0", "--json"))["deleted"] == []


def test_human_output_renders(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict, new_user_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Without --json every command prints text (tables) and exits 0."""
    monkeypatch.setenv("COLUMNS", "250")  # rich reads it live; no truncated cells
    steps: list[tuple[list[Any], str]] = [
        (["bank", "list"], TASK),
        (["bank", "show", TASK], "Anchors"),
        (["user", "add", "alice", "--bank", TASK, "--profile", new_user_file], "alice"),
        (["user", "fuse", "alice"], "Weight"),
        (["user", "adapt", "alice", "--shots", "2", "--epochs", "1"], "Stack"),
        (["user", "export", "alice", "--out", cli_env.root / "e"], "PeftModel.from_pretrained"),
        (["user", "show", "alice"], "Recipe"),
        (["user", "list"], "alice"),
        (["storage", "report"], "ratio vs OPPU"),
        (["fsck"], "fsck: clean"),
        (["gc", "--dry-run"], "gc: would delete"),
    ]
    for argv, expected in steps:
        result = mta(*argv)
        assert result.code == 0, (argv, result.stderr)
        assert expected in result.stdout, (argv, result.stdout)


def test_profile_from_stdin(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict, new_user_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(new_user_file.read_text()))
    user = ok(mta("user", "add", "alice", "--bank", f"{TASK}@1", "--profile", "-", "--json"))
    assert user["bank_version"] == 1


def test_profile_list_picks_the_users_entry(cli_env: CliEnv, mta: Mta, pushed_bank: dict) -> None:
    users = write_users(cli_env.root / "many.json", [movie_user(u, 5) for u in ("bob", "carol")])
    user = ok(mta("user", "add", "carol", "--bank", TASK, "--profile", users, "--json"))
    assert user["user_id"] == "carol" and user["profile_items"] == 5
    assert json.loads(users.read_text())[1]["user_id"] == "carol"


def test_root_options_select_the_registry(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mta --db URL --store URL cmd` works without env; the flags belong to the root only."""
    for key in cli_env.env():
        monkeypatch.delenv(key)
    root_flags = ["--db", cli_env.db_url, "--store", cli_env.store_url,
                  "--cache-dir", cli_env.cache_dir]  # fmt: skip
    assert len(ok(mta(*root_flags, "bank", "list", "--json"))) == 1
    # Declared once, on the root: a subcommand does not take them (usage error, exit 2).
    assert mta("bank", "list", "--json", *root_flags).code == 2

    other = cli_env.root / "other"
    other_flags = ["--db", f"sqlite:///{other / 'r.db'}", "--store", f"file://{other / 's'}"]
    other.mkdir()
    ok(mta(*other_flags, "init", "--json"))
    assert ok(mta(*other_flags, "bank", "list", "--json")) == []
    # Root flags override the environment.
    monkeypatch.setenv("MTA_DB_URL", f"sqlite:///{other / 'r.db'}")
    monkeypatch.setenv("MTA_STORE_URL", f"file://{other / 's'}")
    assert len(ok(mta(*root_flags, "bank", "list", "--json"))) == 1
    assert ok(mta("bank", "list", "--json")) == []
