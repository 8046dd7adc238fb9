"""Bad input: exit 1, exactly one `Error:` line on stderr, and nothing changed."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.fixtures_model import random_adapter
from tests.support import (
    ANCHOR_IDS,
    TASK,
    CliEnv,
    Mta,
    assert_rejected,
    movie_user,
    push_bank_argv,
    write_users,
)

# --- bank push: malformed adapter folders ------------------------------------------------


def _corrupt_missing_config(folder: Path, shapes: dict) -> None:
    (folder / "adapter_config.json").unlink()


def _corrupt_garbled_config(folder: Path, shapes: dict) -> None:
    (folder / "adapter_config.json").write_text('{"r": 8, "lora_alpha": ', encoding="utf-8")


def _corrupt_config_schema(folder: Path, shapes: dict) -> None:
    (folder / "adapter_config.json").write_text(json.dumps(["not", "a", "config"]))


def _corrupt_pickle_bin(folder: Path, shapes: dict) -> None:
    weights = folder / "adapter_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), folder / "adapter_model.bin")
    weights.unlink()


def _corrupt_truncated_weights(folder: Path, shapes: dict) -> None:
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def _corrupt_shape_mismatch(folder: Path, shapes: dict) -> None:
    from mta.peft_io import save_peft_adapter

    wrong = {path: (out, inp + 3) for path, (out, inp) in shapes.items()}
    save_peft_adapter(random_adapter(wrong, 8, seed=7), folder)


def _corrupt_nan(folder: Path, shapes: dict) -> None:
    # save_peft_adapter refuses NaN, so poison the written safetensors file directly.
    from safetensors.torch import load_file, save_file

    weights = folder / "adapter_model.safetensors"
    tensors = load_file(weights)
    first = sorted(tensors)[0]
    tensors[first][0, 0] = math.nan
    save_file(tensors, weights)


@pytest.mark.parametrize(
    "corrupt",
    [
        _corrupt_missing_config,
        _corrupt_garbled_config,
        _corrupt_config_schema,
        _corrupt_pickle_bin,
        _corrupt_truncated_weights,
        _corrupt_shape_mismatch,
        _corrupt_nan,
    ],
    ids=lambda f: f.__name__.removeprefix("_corrupt_"),
)
def test_bank_push_rejects_bad_adapter(
    cli_env: CliEnv, mta: Mta, tiny_shapes: dict, corrupt: Callable[[Path, dict], None]
) -> None:
    argv = push_bank_argv(cli_env, tiny_shapes)
    corrupt(cli_env.root / "anchors" / ANCHOR_IDS[1], tiny_shapes)
    assert_rejected(cli_env, mta, *argv)
    assert json.loads(mta("bank", "list", "--json").stdout) == []


def test_bank_push_rejects_missing_profile_entry(
    cli_env: CliEnv, mta: Mta, tiny_shapes: dict
) -> None:
    argv = push_bank_argv(cli_env, tiny_shapes)
    profiles = cli_env.root / "anchors" / "profiles.json"
    write_users(profiles, [movie_user(i, 9) for i in ANCHOR_IDS[:-1]])
    result = assert_rejected(cli_env, mta, *argv)
    assert ANCHOR_IDS[-1] in result.stderr


def test_bank_push_rejects_missing_folder(cli_env: CliEnv, mta: Mta, tiny_shapes: dict) -> None:
    argv = push_bank_argv(cli_env, tiny_shapes)
    argv[3] = str(cli_env.root / "no-such-adapter")
    assert_rejected(cli_env, mta, *argv)


def test_bank_push_names_a_missing_folder_before_the_profiles(cli_env: CliEnv, mta: Mta) -> None:
    # Before: "p.json: file not found", about the profiles, not the folder that is missing.
    missing = cli_env.root / "no-such-adapter"
    result = assert_rejected(
        cli_env, mta, "bank", "push", TASK, missing, "--profiles", cli_env.root / "p.json"
    )
    assert str(missing) in result.error_lines()[0]


def test_bank_push_rejects_unknown_task(cli_env: CliEnv, mta: Mta, tiny_shapes: dict) -> None:
    argv = push_bank_argv(cli_env, tiny_shapes)
    argv[2] = "no_such_task"
    assert_rejected(cli_env, mta, *argv)


def test_bank_push_rejects_missing_base_model(cli_env: CliEnv, mta: Mta, tiny_shapes: dict) -> None:
    argv = push_bank_argv(cli_env, tiny_shapes)
    argv[argv.index("--base-model") + 1] = str(cli_env.root / "no-model")
    assert_rejected(cli_env, mta, *argv)


def test_bank_build_rejects_missing_data(cli_env: CliEnv, mta: Mta) -> None:
    assert_rejected(cli_env, mta, "bank", "build", TASK, "--data", cli_env.root / "nope.json",
                    "--anchors", "2")  # fmt: skip


def test_bank_build_rejects_too_few_eligible_users(cli_env: CliEnv, mta: Mta) -> None:
    data = write_users(cli_env.root / "users.json", [movie_user(u, 3) for u in ("u1", "u2")])
    assert_rejected(
        cli_env, mta, "bank", "build", TASK, "--data", data, "--anchors", "2",
        "--min-history", "8", "--base-model", cli_env.base_model, "--embedder", cli_env.embedder,
    )  # fmt: skip


# --- banks and users that do not exist -----------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["bank", "show", "no_such_task"],
        ["bank", "show", TASK, "--version", "9"],
        ["bank", "show", TASK, "--alias", "nope"],
        ["bank", "alias", TASK, "9", "prod"],
        ["user", "fuse", "ghost"],
        ["user", "adapt", "ghost", "--shots", "2"],
        ["user", "export", "ghost", "--out", "{root}/x"],
        ["user", "show", "ghost"],
        ["user", "delete", "ghost"],
        ["user", "add", "bob", "--bank", "no_such_task", "--profile", "{profile}"],
        ["user", "add", "bob", "--bank", f"{TASK}@9", "--profile", "{profile}"],
        ["user", "add", "bob", "--bank", TASK, "--profile", "{root}/missing.json"],
        ["user", "fuse", "alice", "--method", "no_such_method"],
        ["user", "fuse", "alice", "--weight-rule", "no_such_rule"],
    ],
    ids=lambda argv: " ".join(argv[:3]),
)
def test_unknown_names_are_rejected(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict, new_user_file: Path, argv: list[str]
) -> None:
    assert mta("user", "add", "alice", "--bank", TASK, "--profile", new_user_file).code == 0
    filled = [a.format(root=cli_env.root, profile=new_user_file) for a in argv]
    assert_rejected(cli_env, mta, *filled)


@pytest.mark.parametrize(
    "argv",
    [
        ["user", "adapt", "--bank", "nosuch", "--shots", "2"],
        ["user", "adapt", "--all", "--bank", "nosuch", "--shots", "2"],
        ["user", "fuse", "--missing", "--bank", "nosuch"],
    ],
    ids=lambda argv: " ".join(argv[:3]),
)
def test_an_unknown_bank_filter_is_named(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict, new_user_file: Path, argv: list[str]
) -> None:
    # Before: "select users: give IDs ..." without a selection flag; with one, 0 users done.
    assert mta("user", "add", "alice", "--bank", TASK, "--profile", new_user_file).code == 0
    line = assert_rejected(cli_env, mta, *argv).error_lines()[0]
    assert "'nosuch'" in line and TASK in line


@pytest.mark.parametrize("user_id", ["a/b", "..", "../etc", "x/../y", "", " ", "a\\b", "a" * 300])
def test_bad_user_ids_are_rejected(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict, user_id: str
) -> None:
    profile = write_users(cli_env.root / "p.json", movie_user(user_id, 4, seed=0))
    assert_rejected(cli_env, mta, "user", "add", user_id, "--bank", TASK, "--profile", profile)


def test_duplicate_user_is_rejected(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict, new_user_file: Path
) -> None:
    assert mta("user", "add", "alice", "--bank", TASK, "--profile", new_user_file).code == 0
    result = assert_rejected(
        cli_env, mta, "user", "add", "alice", "--bank", TASK, "--profile", new_user_file
    )
    assert "alice" in result.stderr


def _profile_with(**changes: Any) -> dict:
    user = movie_user("bob", 4, seed=0)
    user.update(changes)
    return user


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        json.dumps(["a", "list", "of", "strings"]),
        json.dumps("just a string"),
        json.dumps(_profile_with(profile=[])),
        json.dumps({"user_id": "bob"}),
        json.dumps(_profile_with(profile="not a list")),
        json.dumps(_profile_with(profile=[{"id": "1", "description": "no tag"}])),
        json.dumps(_profile_with(profile=[{"id": "1", "tag": "cats", "description": "x"}])),
        json.dumps(_profile_with(profile=[1, 2, 3])),
    ],
    ids=[
        "garbled", "empty-file", "list-of-strings", "string", "empty-profile", "no-profile",
        "profile-not-list", "item-without-tag", "unknown-tag", "items-not-objects",
    ],
)  # fmt: skip
def test_bad_profiles_are_rejected(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict, content: str
) -> None:
    profile = cli_env.root / "bob.json"
    profile.write_text(content, encoding="utf-8")
    assert_rejected(cli_env, mta, "user", "add", "bob", "--bank", TASK, "--profile", profile)


@pytest.mark.parametrize(
    "argv",
    [
        ["user", "adapt", "alice", "--shots", "0"],
        ["user", "export", "alice", "--out", "x", "--max-rank", "0"],
        ["bank", "build", TASK, "--data", "x.json"],
        ["user", "nope"],
    ],
)
def test_usage_errors_exit_2(cli_env: CliEnv, mta: Mta, argv: list[str]) -> None:
    before = cli_env.dump()
    assert mta(*argv).code == 2
    assert cli_env.dump() == before
