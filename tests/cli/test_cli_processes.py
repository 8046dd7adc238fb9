"""Processes: `kill -9` at random points never leaves a row without its blob; parallel adapt.

Each test first runs the command to completion in a child process (the positive control,
and the duration that kill times are drawn from), then kills fresh runs after seeded
random delays spanning start-up, training and publishing.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support import (
    TASK,
    CliEnv,
    Mta,
    adapt_in_parallel,
    movie_user,
    mta_command,
    write_users,
)

# Each test starts several interpreters (seconds each on 2 busy cores): slow, not fast-tier.
pytestmark = pytest.mark.slow

SEEDS = (0, 1, 2)


def run_to_completion(argv: Sequence[str | Path], env: dict[str, str]) -> float:
    """Run `mta argv` in a child; assert success; return its wall time (seconds)."""
    start = time.monotonic()
    done = subprocess.run(
        mta_command(*argv), env={**os.environ, **env}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return time.monotonic() - start


def run_and_kill(argv: Sequence[str | Path], env: dict[str, str], delay: float) -> int | None:
    """Start `mta argv`, SIGKILL it after `delay` seconds; its return code (-9 when killed)."""
    proc = subprocess.Popen(
        mta_command(*argv),
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode


def assert_consistent_then_collect(mta: Mta, env: CliEnv) -> None:
    """fsck finds no row without its blob; gc --grace 0 leaves no orphan behind."""
    fsck = mta("fsck", "--json")
    assert fsck.code == 0, fsck.stdout + fsck.stderr
    assert fsck.json()["ok"] is True
    assert mta("gc", "--grace", "0", "--json").code == 0
    after = mta("fsck", "--json")
    assert after.code == 0 and after.json()["orphans"] == []


def test_kill_during_bank_build(cli_env: CliEnv, mta: Mta) -> None:
    data = write_users(cli_env.root / "users.json", [movie_user(f"u{i}", 8) for i in range(6)])
    argv = [
        "bank", "build", TASK, "--data", data, "--anchors", "3", "--epochs", "2",
        "--rank", "2", "--min-history", "4", "--base-model", cli_env.base_model,
        "--embedder", cli_env.embedder,
    ]  # fmt: skip
    full = run_to_completion(argv, cli_env.env())
    versions = 1
    for seed in SEEDS:
        delay = random.Random(seed).uniform(0.3 * full, 1.05 * full)
        code = run_and_kill(argv, cli_env.env(), delay)
        assert_consistent_then_collect(mta, cli_env)
        banks = json.loads(mta("bank", "list", "--json").stdout)
        # Publishing is one transaction: a run killed before its commit adds nothing, one
        # killed after it (or finished) adds one whole version.
        published = len(banks) - versions
        assert published == 1 if code == 0 else published in (0, 1)
        versions = len(banks)
        assert [b["version"] for b in banks] == list(range(1, versions + 1))
        assert all(b["num_anchors"] == 3 for b in banks)


def test_kill_during_user_adapt(cli_env: CliEnv, mta: Mta, pushed_bank: dict) -> None:
    users = [f"k{seed}" for seed in SEEDS]
    for user_id in ["ref", *users]:
        profile = write_users(cli_env.root / f"{user_id}.json", movie_user(user_id, 6, seed=3))
        assert mta("user", "add", user_id, "--bank", TASK, "--profile", profile).code == 0

    def argv(user_id: str) -> list[str]:
        return ["user", "adapt", user_id, "--shots", "4", "--epochs", "3"]

    full = run_to_completion(argv("ref"), cli_env.env())
    for seed, user_id in zip(SEEDS, users, strict=True):
        delay = random.Random(seed).uniform(0.3 * full, 1.05 * full)
        code = run_and_kill(argv(user_id), cli_env.env(), delay)
        assert_consistent_then_collect(mta, cli_env)
        shown = json.loads(mta("user", "show", user_id, "--json").stdout)
        # A finished run stored its stack; a killed one did so only if it got past the commit.
        if code == 0:
            assert shown["stack"] is not None
        # The user is still usable: adapting again after the crash succeeds.
        assert mta("user", "adapt", user_id, "--shots", "2", "--epochs", "1").code == 0
    assert_consistent_then_collect(mta, cli_env)


@pytest.mark.parametrize("workers", [3])
def test_parallel_adapt_of_different_users(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict, workers: int
) -> None:
    """Processes adapting different users at once on SQLite all succeed."""
    users = [f"p{i}" for i in range(workers)]
    stacks = adapt_in_parallel(cli_env, mta, users)
    assert [stack["rank"] for stack in stacks] == [1] * workers
    listed = json.loads(mta("user", "list", "--json").stdout)
    assert sorted(u["user_id"] for u in listed) == users
    for user_id in users:
        assert json.loads(mta("user", "show", user_id, "--json").stdout)["stack"] is not None
    assert json.loads(mta("fsck", "--json").stdout)["ok"] is True
