"""Bulk `mta user add|fuse|adapt`: selections, skips, failures, --json, kill -9 + re-run, and
per-user claims: two jobs at once train each user once, other jobs' users are `busy`."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.support import (
    TASK,
    CliEnv,
    Mta,
    movie_user,
    mta_command,
    ok,
    run_together,
    write_users,
)

TRAIN = ("--shots", "2", "--max-steps", "1")


def _add_users(env: CliEnv, mta: Mta, *user_ids: str) -> dict:
    """Add users in one `user add --from` call; its JSON summary."""
    users = write_users(env.root / "users.json", [movie_user(u, 6, seed=2) for u in user_ids])
    return ok(mta("user", "add", "--from", users, "--bank", TASK, "--json"))


def test_add_from_file_batches_skips_known_and_reports_bad_records(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict
) -> None:
    summary = _add_users(cli_env, mta, "u1", "u2")
    assert summary["done"] == ["u1", "u2"] and summary["failed"] == []
    assert [u["status"] for u in summary["users"]] == ["added", "added"]
    # The same profile added alone and in a batch gets the same embedding, so the same recipe.
    solo = write_users(cli_env.root / "solo.json", movie_user("u1", 6, seed=2))
    ok(mta("user", "add", "solo", "--bank", TASK, "--profile", solo, "--json"))
    solo_recipe = ok(mta("user", "fuse", "solo", "--json"))
    bulk_recipe = ok(mta("user", "fuse", "u1", "--json"))
    assert [(a["anchor_id"], round(a["score"], 5)) for a in solo_recipe["anchors"]] == [
        (a["anchor_id"], round(a["score"], 5)) for a in bulk_recipe["anchors"]
    ]
    bad = [movie_user("u1", 6), movie_user("u3", 6), {"user_id": "u4", "profile": []}, "text"]
    path = cli_env.root / "more.json"
    path.write_text(json.dumps(bad), encoding="utf-8")
    result = mta("user", "add", "--from", path, "--json")  # the only task with a bank
    assert result.code == 1, result.stderr
    report = result.json()
    assert report["done"] == ["u3"] and report["skipped"] == ["u1"]
    assert [f["user_id"] for f in report["failed"]] == ["u4", "?"]
    assert all(f["reason"] and "\n" not in f["reason"] for f in report["failed"])
    assert sorted(u["user_id"] for u in ok(mta("user", "list", "--json"))) == [
        "solo",
        "u1",
        "u2",
        "u3",
    ]


def test_adapt_selections_skip_rules_and_force(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict
) -> None:
    _add_users(cli_env, mta, "u1", "u2", "u3")
    single = ok(mta("user", "adapt", "u1", *TRAIN, "--json"))  # one id: today's stack JSON
    assert single["user_id"] == "u1" and single["stack_id"] >= 1
    missing = ok(mta("user", "adapt", "--missing", *TRAIN, "--json"))
    assert missing["done"] == ["u2", "u3"] and missing["skipped"] == []
    assert set(missing["phase_means"]) == {"fuse", "train", "commit"}
    assert missing["users_per_minute"] > 0 and missing["seconds_p99"] >= missing["seconds_p50"]
    again = ok(mta("user", "adapt", "--all", "--bank", TASK, *TRAIN, "--json"))
    assert again["done"] == [] and again["skipped"] == ["u1", "u2", "u3"]
    assert ok(mta("user", "adapt", "u1", "u2", *TRAIN, "--json"))["skipped"] == ["u1", "u2"]
    ids = cli_env.root / "ids.txt"
    ids.write_text("# redo these\nu3\nu1\n", encoding="utf-8")
    forced = ok(mta("user", "adapt", "--from", ids, "--force", *TRAIN, "--json"))
    assert forced["done"] == ["u3", "u1"]
    changed = ok(mta("user", "adapt", "--all", "--shots", "3", "--max-steps", "1", "--json"))
    assert changed["done"] == ["u1", "u2", "u3"]  # another request: nobody matches
    other_task = ok(mta("user", "adapt", "--all", "--bank", "citation", *TRAIN, "--json"))
    assert other_task["done"] == [] and other_task["users"] == []


def test_a_failing_user_is_listed_and_the_exit_code_is_1(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict
) -> None:
    _add_users(cli_env, mta, "u1", "u2")
    result = mta("user", "adapt", "u1", "ghost", "u2", *TRAIN, "--json")
    assert result.code == 1, result.stderr
    report = result.json()
    assert report["done"] == ["u1", "u2"]
    assert report["failed"] == [
        {"user_id": "ghost", "reason": "no user 'ghost'; add one with `mta user add`"}
    ]
    assert [u["status"] for u in report["users"]] == ["adapted", "failed", "adapted"]
    # Without a terminal, one log line per user on stderr; the table names the failure.
    text = mta("user", "adapt", "u1", "ghost", "--force", *TRAIN)
    assert text.code == 1
    assert "[1/2] u1 adapted in" in text.stderr and "[2/2] ghost failed in" in text.stderr
    assert "ghost" in text.stdout and "adapted 1, skipped 0, failed 1" in text.stdout


def test_bulk_fuse_skips_users_with_a_recipe(cli_env: CliEnv, mta: Mta, pushed_bank: dict) -> None:
    _add_users(cli_env, mta, "u1", "u2")
    assert ok(mta("user", "fuse", "--all", "--json"))["done"] == ["u1", "u2"]
    assert ok(mta("user", "fuse", "--all", "--json"))["skipped"] == ["u1", "u2"]
    forced = ok(mta("user", "fuse", "u2", "--bank", TASK, "--force", "--top-k", "3", "--json"))
    assert forced["done"] == ["u2"]
    assert len(ok(mta("user", "show", "u2", "--json"))["recipe"]["anchors"]) == 3
    nothing = mta("user", "fuse", "--missing")
    assert nothing.code == 0 and "u1" not in nothing.stdout  # both have a recipe, no stack
    assert mta("user", "fuse").code == 1  # no selection: one Error line


def _stacked_users(db_file: Path) -> set[str]:
    """Users with at least one stack row, read straight from the SQLite file."""
    with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=5) as connection:
        return {row[0] for row in connection.execute("SELECT DISTINCT user_id FROM stacks")}


def test_a_killed_bulk_job_resumes_with_the_remaining_users(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict
) -> None:
    user_ids = [f"k{i}" for i in range(8)]
    _add_users(cli_env, mta, *user_ids)
    db_file = Path(cli_env.db_url.removeprefix("sqlite:///"))
    argv = mta_command(
        "--db", cli_env.db_url, "--store", cli_env.store_url, "--cache-dir", cli_env.cache_dir,
        "user", "adapt", "--all", "--shots", "4", "--epochs", "3", "--json",
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTA_")}
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(_stacked_users(db_file)) < 2 and child.poll() is None:
        assert time.monotonic() < deadline, "the bulk job committed nobody in 300 s"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.communicate()
    committed = _stacked_users(db_file)
    assert 2 <= len(committed) < len(user_ids), "the job finished before the kill"
    rerun = ok(mta("user", "adapt", "--all", "--shots", "4", "--epochs", "3", "--json"))
    # The user in flight at the kill is still claimed by the dead process: taken over at once.
    assert rerun["busy"] == []
    assert sorted(rerun["skipped"]) == sorted(committed)
    assert sorted(rerun["done"]) == sorted(set(user_ids) - committed)
    with sqlite3.connect(db_file) as connection:
        counts = dict(connection.execute("SELECT user_id, COUNT(*) FROM stacks GROUP BY user_id"))
    assert counts == dict.fromkeys(user_ids, 1)
    assert ok(mta("fsck", "--json"))["ok"] is True
    assert rerun["failed"] == []


def _stack_counts(db_file: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=5) as connection:
        return dict(connection.execute("SELECT user_id, COUNT(*) FROM stacks GROUP BY user_id"))


def _claim_rows(db_file: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=5) as connection:
        return connection.execute("SELECT user_id, job_id FROM claims").fetchall()


def test_two_bulk_adapts_at_once_train_each_user_once(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict
) -> None:
    """Issue #22: `mta user adapt --all & mta user adapt --all` stored two stacks per user."""
    user_ids = [f"c{i}" for i in range(8)]
    _add_users(cli_env, mta, *user_ids)
    argv = mta_command("user", "adapt", "--all", *TRAIN, "--json")
    outputs = run_together([argv, argv], cli_env.env())  # both exit 0: busy is no failure
    first, second = (json.loads(out) for out in outputs)
    db_file = Path(cli_env.db_url.removeprefix("sqlite:///"))
    assert _stack_counts(db_file) == dict.fromkeys(user_ids, 1)
    assert not set(first["done"]) & set(second["done"])
    assert sorted(first["done"] + second["done"]) == user_ids
    for report, other in ((first, second), (second, first)):
        assert report["failed"] == []
        # Each user the other job trained was busy here (claimed) or skipped (committed).
        assert sorted(report["busy"] + report["skipped"]) == sorted(other["done"])
        statuses = {u["user_id"]: u["status"] for u in report["users"]}
        assert {statuses[u] for u in report["busy"]} <= {"busy"}
    assert _claim_rows(db_file) == []  # every claim was released
    assert ok(mta("fsck", "--json"))["ok"] is True


def _plant_claim(env: CliEnv, user_id: str, expires_in: float) -> None:
    """A claim as a job on another machine holds it (or left it, when expired)."""
    from datetime import timedelta

    from mta.registry.context import RegistryContext
    from mta.registry.models import SqlClaim, utcnow

    now = utcnow()
    with RegistryContext.open(env.db_url, env.store_url, env.cache_dir) as ctx, ctx.session() as s:
        s.add(
            SqlClaim(
                user_id=user_id, job_id="e" * 32, kind="adapt", host="gpu-7/0123456789ab",
                pid=31337, claimed_at=now, expires_at=now + timedelta(seconds=expires_in),
            )
        )  # fmt: skip


def test_users_of_another_job_are_busy_and_a_dead_jobs_claims_expire(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict
) -> None:
    _add_users(cli_env, mta, "u1", "u2", "u3")
    _plant_claim(cli_env, "u2", expires_in=600)  # a live job elsewhere is on u2
    _plant_claim(cli_env, "u3", expires_in=-1)  # a job killed more than a lease ago
    report = ok(mta("user", "adapt", "--all", *TRAIN, "--json"))  # exit 0: busy is no failure
    assert report["done"] == ["u1", "u3"] and report["busy"] == ["u2"]
    assert report["failed"] == [] and report["skipped"] == []
    busy = next(u for u in report["users"] if u["user_id"] == "u2")
    assert busy["status"] == "busy" and busy["reason"].startswith("claimed by another adapt job")
    assert "gpu-7" in busy["reason"] and "\n" not in busy["reason"]
    text = mta("user", "adapt", "--all", *TRAIN)
    assert text.code == 0, text.stderr
    assert "adapted 0, skipped 2, busy 1, failed 0 in" in text.stdout
    assert "u2 busy in" in text.stderr  # the per-user log line names the holder
    assert "busy in another job" in text.stdout
    fused = ok(mta("user", "fuse", "--all", "--json"))  # fuse jobs claim users too
    assert fused["busy"] == ["u2"] and fused["skipped"] == ["u1", "u3"]
    assert ok(mta("fsck", "--json"))["ok"] is True
    assert mta("gc", "--grace", "0", "--json").code == 0
    db_file = Path(cli_env.db_url.removeprefix("sqlite:///"))
    assert [u for u, _ in _claim_rows(db_file)] == ["u2"]  # the live job's claim stays


def test_add_needs_a_profile_or_a_file_but_not_both(cli_env: CliEnv, mta: Mta) -> None:
    users = write_users(cli_env.root / "users.json", [movie_user("u1", 6)])
    assert mta("user", "add", "bob", "--bank", TASK).code == 2
    assert mta("user", "add", "bob", "--from", users).code == 2
    assert mta("user", "add", "--from", users).code == 1  # no bank pushed yet: one Error line
