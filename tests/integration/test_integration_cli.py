"""The CLI flow, parallel adapts and a kill -9 against real PostgreSQL + S3 (moto_server)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support import (
    ANCHOR_IDS,
    TASK,
    CliEnv,
    Mta,
    adapt_in_parallel,
    movie_user,
    mta_command,
    ok,
    push_bank_argv,
    write_users,
)

pytestmark = pytest.mark.integration


def test_cli_flow_on_postgres_and_s3(
    remote_env: CliEnv, mta: Mta, remote_profile: Path, tiny_shapes: dict
) -> None:
    assert remote_env.store_url.startswith("s3://")
    bank = ok(mta(*push_bank_argv(remote_env, tiny_shapes)))
    assert (bank["version"], bank["num_anchors"]) == (1, len(ANCHOR_IDS))
    assert ok(mta("bank", "alias", TASK, "1", "prod", "--json"))["aliases"] == ["prod"]

    ok(mta("user", "add", "alice", "--bank", f"{TASK}@prod", "--profile", remote_profile,
           "--json"))  # fmt: skip
    recipe = ok(mta("user", "fuse", "alice", "--json"))
    assert len(recipe["anchors"]) == 2
    stack = ok(mta("user", "adapt", "alice", "--shots", "3", "--epochs", "1", "--json"))
    assert stack["bytes"] > 0
    export = ok(mta("user", "export", "alice", "--out", remote_env.root / "out", "--json"))
    assert export["rank"] == 17
    assert (remote_env.root / "out" / "adapter_model.safetensors").is_file()

    report = ok(mta("storage", "report", "--json"))
    assert report["users"] == 1 and report["total_bytes"] > 0
    assert ok(mta("fsck", "--json"))["ok"] is True

    before = remote_env.dump()
    dup = mta("user", "add", "alice", "--bank", TASK, "--profile", remote_profile)
    assert dup.code == 1 and len(dup.error_lines()) == 1
    assert remote_env.dump() == before

    ok(mta("user", "delete", "alice", "--json"))
    assert ok(mta("user", "list", "--json")) == []
    assert ok(mta("fsck", "--json"))["ok"] is True


def test_parallel_adapt_on_postgres_and_s3(remote_env: CliEnv, mta: Mta, tiny_shapes: dict) -> None:
    ok(mta(*push_bank_argv(remote_env, tiny_shapes)))
    users = ["p0", "p1", "p2"]
    stacks = adapt_in_parallel(remote_env, mta, users)
    assert [stack["rank"] for stack in stacks] == [1, 1, 1]
    for user_id in users:
        assert ok(mta("user", "show", user_id, "--json"))["stack"] is not None
    assert ok(mta("fsck", "--json"))["ok"] is True


def test_kill_during_adapt_on_postgres_and_s3(
    remote_env: CliEnv, mta: Mta, tiny_shapes: dict
) -> None:
    ok(mta(*push_bank_argv(remote_env, tiny_shapes)))
    profile = write_users(remote_env.root / "k.json", movie_user("k", 6, seed=3))
    ok(mta("user", "add", "k", "--bank", TASK, "--profile", profile, "--json"))
    proc = subprocess.Popen(
        mta_command("user", "adapt", "k", "--shots", "4", "--epochs", "5"),
        env={**os.environ, **remote_env.env()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Kill as training starts: the recipe is committed, the stack is not yet written.
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("train:"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert ok(mta("user", "show", "k", "--json"))["stack"] is None
    fsck = ok(mta("fsck", "--json"))
    assert fsck["ok"] is True
    ok(mta("gc", "--grace", "0", "--json"))
    assert ok(mta("fsck", "--json"))["orphans"] == []
    ok(mta("user", "adapt", "k", "--shots", "2", "--epochs", "1", "--json"))
