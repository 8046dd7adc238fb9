"""Bulk personalization next to a competing CPU-bound process: threads fitted vs torch's default.

torch starts one intra-op thread per core. When another process keeps a core busy, a
job whose threads outnumber the free cores waits at every parallel region for a thread
that is descheduled. `mta/threads.py` fits each process's threads to the CPUs it may use
(affinity, cgroup quota, a Ray worker's `num_cpus`); this section measures what that buys
with one busy-looping process beside the job, on the same registry and users as the
`bulk` section.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.bulk import TASK, TRAIN, _lamp_users, _load, _models, _push_bank, _rate, _Registry
from bench.report import Section

SPIN = "while True:\n    pass\n"  # one CPU-bound thread, the competitor
# Set to 0 when a CPU-bound process already runs (e.g. a one-thread `mta eval`): it is then
# the competitor, and the section starts none of its own.
SPINNER_ENV = "MTA_BENCH_CONTENTION_SPINNER"
# A row that crawls (oversubscribed threads can wait a time slice per parallel region) is
# stopped after this many seconds and reported as a bound.
ROW_TIMEOUT_ENV = "MTA_BENCH_CONTENTION_ROW_TIMEOUT"


def _torch_default_threads() -> int:
    """The intra-op threads a fresh torch process starts with on this machine."""
    code = "import torch; print(torch.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MTA_THREADS")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return int(done.stdout.strip())


def _size(quick: bool) -> int:
    """Users per row: `MTA_BENCH_CONTENTION_USERS`, else 4 (SmolLM2) or 6 (tiny)."""
    value = os.environ.get("MTA_BENCH_CONTENTION_USERS")
    return int(value) if value else (6 if quick else 4)


def _rows(default: int) -> list[tuple[str, tuple[str, ...], dict[str, str]]]:
    """(row name, extra `user adapt` flags, environment) of each measured row."""
    ray = ("--executor", "ray", "--workers", "2")
    return [
        ("batch process, threads fitted", (), {}),
        ("batch process, torch default", (), {"MTA_THREADS": str(default)}),
        ("batch process, 1 thread", (), {"MTA_THREADS": "1"}),
        ("Ray 2 workers, threads fitted", ray, {}),
        ("Ray 2 workers, torch default", ray, {"MTA_THREADS": str(default)}),
    ]


def bench_contention(quick: bool) -> Section:
    """Users per minute with a busy competitor: batch and Ray jobs, fitted vs default threads."""
    n = _size(quick)
    default = _torch_default_threads()
    rows = _rows(default)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mta-bench-contention-") as tmp:
        registry = _Registry(Path(tmp))
        base_model, embedder, label = _models(quick, Path(tmp))
        anchors, users = _lamp_users(n * len(rows))
        _push_bank(registry, anchors, base_model, embedder)
        users_file = registry.root / "users.json"
        users_file.write_text(json.dumps(users), encoding="utf-8")
        registry.run("user", "add", "--from", users_file, "--bank", TASK)
        ids = [str(u["user_id"]) for u in users]
        section = Section(
            f"Bulk personalization beside a competing CPU-bound process ({label}, shots 5, "
            "rank 1, 3 epochs)",
            ["run", "threads per process", "users", "wall s", "users/min", "train s per user"],
        )
        own = os.environ.get(SPINNER_ENV, "1") != "0"
        spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if own else None
        try:
            for i, (name, extra, env) in enumerate(rows):
                batch = registry.ids_file(f"rows{i}.txt", ids[i * n : (i + 1) * n])
                row = _row(registry, name, ("--from", batch, *extra), env, n)
                section.add(*row)
                print(f"  {name}: {row[3]} s for {row[2]} users", flush=True)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    section.notes += _notes(section, own, default, n, load_before)
    return section


def _row(
    registry: _Registry, name: str, argv: tuple, env: dict[str, str], n: int
) -> tuple[Any, ...]:
    """One table row; a row stopped at the timeout shows its wall and rate as bounds."""
    limit = float(os.environ.get(ROW_TIMEOUT_ENV, "900"))
    threads = env.get("MTA_THREADS", "fitted")
    try:
        wall, summary = registry.run("user", "adapt", *argv, *TRAIN, env=env, timeout=limit)
    except subprocess.TimeoutExpired:
        return (name, threads, f"< {n}", f"> {limit:.0f}", f"< {_rate(n, limit):.3g}", "–")
    done = len(summary["done"])
    train = (summary.get("phase_means") or {}).get("train", float("nan"))
    return (name, threads, done, wall, _rate(done, wall), train)


def _notes(
    section: Section, own: bool, default: int, n: int, load_before: tuple[float, float, float]
) -> list[str]:
    """How the rows were run, the fitted/default ratios and the load."""
    rates = {row[0]: row[4] for row in section.rows}

    def ratio(fitted: str, default: str) -> str:
        if isinstance(rates[fitted], str):  # the fitted row itself was stopped
            return "n/a (the fitted row hit the timeout)"
        if isinstance(rates[default], str):  # stopped at the timeout: a lower bound
            return f"> {rates[fitted] / float(rates[default].lstrip('< ')):.2f}x"
        return f"{rates[fitted] / rates[default]:.2f}x"

    batch = ratio("batch process, threads fitted", "batch process, torch default")
    ray = ratio("Ray 2 workers, threads fitted", "Ray 2 workers, torch default")
    competitor = (
        "one `python -c 'while True: pass'` process"
        if own
        else f"an outside CPU-bound process ({SPINNER_ENV}=0)"
    )
    return [
        f"{competitor} ran beside every row; torch's default here is {default} threads; each "
        f"row adapts its own {n} LaMP users (`--from`), walls include process start and "
        "model load",
        f"fitted / default users/min: batch {batch}, Ray {ray}",
        f"load average 1/5/15 min: before {_load(load_before)}, after {_load(os.getloadavg())}",
    ]
