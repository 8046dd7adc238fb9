"""The CLI flow, parallel adapts and a kill -9 against real PostgreSQL + S3 (moto_server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.cli_env import Result, movie_user, mta_command
from tests.cli.conftest import ANCHOR_IDS, TASK, CliEnv, push_bank_argv

pytestmark = pytest.mark.integration

Mta = Callable[..., Result]


def ok(result: Result) -> dict | list:
    """Assert a zero exit; return the parsed JSON on stdout."""
    assert result.code == 0, result.stderr
    return result.json()


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

    before = remote_env.snapshot()
    dup = mta("user", "add", "alice", "--bank", TASK, "--profile", remote_profile)
    assert dup.code == 1 and len(dup.error_lines()) == 1
    assert remote_env.snapshot() == before

    ok(mta("user", "delete", "alice", "--json"))
    assert ok(mta("user", "list", "--json")) == []
    assert ok(mta("fsck", "--json"))["ok"] is True


def test_parallel_adapt_on_postgres_and_s3(remote_env: CliEnv, mta: Mta, tiny_shapes: dict) -> None:
    ok(mta(*push_bank_argv(remote_env, tiny_shapes)))
    users = ["p0", "p1", "p2"]
    for user_id in users:
        profile = remote_env.root / f"{user_id}.json"
        profile.write_text(json.dumps(movie_user(user_id, 5, seed=4)))
        ok(mta("user", "add", user_id, "--bank", TASK, "--profile", profile, "--json"))
    procs = [
        subprocess.Popen(
            mta_command("user", "adapt", u, "--shots", "3", "--epochs", "1", "--json"),
            env={**os.environ, **remote_env.env()},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for u in users
    ]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
        assert json.loads(stdout)["rank"] == 1
    for user_id in users:
        assert ok(mta("user", "show", user_id, "--json"))["stack"] is not None
    assert ok(mta("fsck", "--json"))["ok"] is True


def test_kill_during_adapt_on_postgres_and_s3(
    remote_env: CliEnv, mta: Mta, tiny_shapes: dict
) -> None:
    ok(mta(*push_bank_argv(remote_env, tiny_shapes)))
    profile = remote_env.root / "k.json"
    profile.write_text(json.dumps(movie_user("k", 6, seed=3)))
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
