"""A real Ray cluster on loopback (`ray start --head` + one worker node) over PostgreSQL + S3:
`kill -9` of a worker process (the actor, or the node's raylet) in a 20-user adapt job.

The cluster runs in its own temp dir and process sessions; teardown kills exactly the
processes of those sessions (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import TASK, movie_user, open_registry, push_folders, write_anchor_bank

pytestmark = pytest.mark.integration

USERS = [f"p{n:02d}" for n in range(20)]
JOB_TIMEOUT = 240  # seconds: the whole job, killed worker and retries included
START_TIMEOUT = 90.0  # seconds for the nodes to come up


@dataclass
class Cluster:
    """A running test cluster: its GCS address and the `ray start --block` processes."""

    address: str
    head: subprocess.Popen
    node: subprocess.Popen


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _session_pids(leader: int) -> list[int]:
    """Processes in the session `ray start` leads (workers are in it, under their own groups)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == leader:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    ray_bin = Path(sys.executable).with_name("ray")
    common = ["--node-ip-address=127.0.0.1", "--block", "--disable-usage-stats"]
    # A session of its own: teardown finds every process of this node, workers included.
    with log.open("w") as out:
        return subprocess.Popen(
            [str(ray_bin), "start", *args, *common, "--include-log-monitor=false"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not up within {timeout:.0f} s")
        time.sleep(0.3)


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def ray_cluster(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """`ray start --head` (1 CPU) plus one worker node (1 CPU) on loopback; the driver joins."""
    ray = pytest.importorskip("ray")
    # One-machine test cluster: no token to share between the nodes and the driver.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    temp = Path(tempfile.mkdtemp(prefix="mta-ray-", dir="/tmp"))  # short: socket paths
    env = dict(os.environ)
    port = _free_port()
    head = _ray_start(
        [
            "--head",
            f"--port={port}",
            "--num-cpus=1",
            "--include-dashboard=false",
            f"--dashboard-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--temp-dir={temp}",
        ],
        env,
        temp / "head.log",
    )
    node = None
    try:
        _wait_for(lambda: _port_open(port), "the Ray head", START_TIMEOUT)
        node = _ray_start(
            [
                f"--address=127.0.0.1:{port}",
                "--num-cpus=1",
                f"--dashboard-agent-listen-port={_free_port()}",
            ],
            env,
            temp / "node.log",
        )
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False, logging_level="WARNING")
        _wait_for(
            lambda: sum(n["Alive"] for n in ray.nodes()) >= 2, "the worker node", START_TIMEOUT
        )
        yield Cluster(f"127.0.0.1:{port}", head, node)
    finally:
        ray.shutdown()
        for proc in (p for p in (node, head) if p is not None):
            for pid in _session_pids(proc.pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def _on_timeout(_signum: int, _frame: Any) -> None:
    raise TimeoutError(f"the Ray job did not finish within {JOB_TIMEOUT} s")


# The actor's own process, or the whole node: its raylet and its actor at once. Killing
# the raylet alone leaves its worker running long enough to finish the unit in flight,
# so nothing would be retried and the test would not exercise the retry.
VICTIMS = {
    "actor": lambda cmdline: cmdline.startswith("ray::BulkWorker"),
    "raylet": lambda cmdline: (
        cmdline.split(" ")[0].endswith("/raylet") or cmdline.startswith("ray::BulkWorker")
    ),
}


@pytest.mark.parametrize("victim", sorted(VICTIMS))
def test_kill_9_of_a_worker_mid_job_loses_nothing(
    victim, ray_cluster, pg_db_url, s3_store_url, tmp_path, tiny_shapes, tiny_model_dir,
    tiny_embedder_dir, caplog,
):  # fmt: skip
    from mta.registry.jobs.bulk import WorkSpec
    from mta.registry.jobs.ray_runner import run_ray
    from mta.registry.requests import AdaptRequest
    from mta.registry.service import add_user, fsck, get_user

    ctx = open_registry(tmp_path / "reg", pg_db_url, s3_store_url)
    folders, profiles = write_anchor_bank(tmp_path / "anchors", tiny_shapes, items=8)
    push_folders(ctx, folders, profiles, tiny_model_dir, tiny_embedder_dir)
    for user_id in USERS:
        add_user(ctx, user_id=user_id, task=TASK, profile=movie_user(user_id, 6))
    killed: list[str] = []

    def kill_the_node_worker(_outcome: Any, done: int, _total: int) -> None:
        # Once a unit has landed and the extra node's actor is inside run_unit (Ray's
        # process title while a method runs), kill it; otherwise try at the next outcome.
        if killed:
            return
        pids = _session_pids(ray_cluster.node.pid)
        if not any(_cmdline(pid).startswith("ray::BulkWorker.run_unit") for pid in pids):
            return
        for pid in pids:
            if VICTIMS[victim](_cmdline(pid)):
                killed.append(_cmdline(pid).strip())
                os.kill(pid, signal.SIGKILL)

    previous = signal.signal(signal.SIGALRM, _on_timeout)
    signal.alarm(JOB_TIMEOUT)
    try:
        summary = run_ray(
            ctx,
            USERS,
            WorkSpec.adapt_users(AdaptRequest(shots=2, max_steps=1)),
            address=ray_cluster.address,
            workers=2,
            unit=3,
            on_outcome=kill_the_node_worker,
        )
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert killed, f"no {victim} process ran on the extra node"
    assert "retrying a unit of" in caplog.text  # the killed worker held a unit
    assert summary.failed == ()
    assert sorted(summary.done + summary.skipped) == USERS
    report = fsck(ctx)
    assert report.ok and not report.missing and not report.corrupt
    for user_id in USERS:
        detail = get_user(ctx, user_id)
        assert detail.recipe is not None and detail.stack is not None
        assert detail.stack.recipe_id == detail.recipe.recipe_id
        assert detail.num_recipes == 1 and detail.num_stacks == 1
    ctx.close()
