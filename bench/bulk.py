"""Bulk personalization: one `mta user adapt ID` process per user vs one batch process vs Ray.

Every row runs the real CLI as a child process against one registry (SQLite + a local
store) holding a bank of four random rank-8 anchors whose profiles are LaMP users, and
real LaMP movie-tagging users to personalize. Rates are users per minute of process wall
time (start, model load and exit included), so the rows compare what an operator waits
for; each row runs on its own subset of users, and the rates are per user, so the subsets
compare fairly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import Section

ROOT = Path(__file__).resolve().parents[1]
TASK = "movie_tagging"
TRAIN = ("--shots", "5", "--rank", "1")
ANCHORS = 4
USERS = 24  # all added in one `user add --from`; (a), (b) and (c) adapt subsets of them


def _lamp_users(count: int) -> tuple[list[dict], list[dict]]:
    """(anchor profiles, users): one entry of 4 real users each, then `count` other entries."""
    from mta.evaluation.data import resolve_data_path
    from mta.lamp_data import group_real_users, load_users

    entries = load_users(resolve_data_path(TASK, None), require_gold=False)
    groups = group_real_users(entries)
    anchors = [
        {**entries[group[0]], "user_id": str(entries[group[0]]["user_id"])}
        for group in groups[:ANCHORS]
    ]
    users = [entries[i] for group in groups[ANCHORS:] for i in group][:count]
    return anchors, users


class _Registry:
    """A registry in a temp folder, driven through child `mta` processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.flags = [
            "--db", f"sqlite:///{root / 'registry.db'}",
            "--store", f"file://{root / 'store'}",
            "--cache-dir", str(root / "cache"),
        ]  # fmt: skip

    def run(
        self, *argv: str | Path, env: dict[str, str] | None = None, timeout: float = 3600
    ) -> tuple[float, Any]:
        """Run `mta <flags> argv --json` (with `env` added); (wall seconds, parsed stdout).

        Raises:
            subprocess.TimeoutExpired: the command ran past `timeout` seconds (killed).
        """
        command = [sys.executable, "-m", "mta.cli.app", *self.flags, *map(str, argv), "--json"]
        start = time.perf_counter()
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
        seconds = time.perf_counter() - start
        if done.returncode not in (0, 1):  # 1: some users failed; the summary says which
            raise RuntimeError(f"{' '.join(command[3:])} failed: {done.stderr[-2000:]}")
        return seconds, json.loads(done.stdout)

    def ids_file(self, name: str, user_ids: list[str]) -> Path:
        """A `--from` file listing `user_ids`."""
        path = self.root / name
        path.write_text("\n".join(user_ids) + "\n", encoding="utf-8")
        return path


def _push_bank(registry: _Registry, anchors: list[dict], base_model: str, embedder: str) -> None:
    """Push random rank-8 anchors, of the base model's shapes, with LaMP profiles."""
    from bench.shapes import random_adapter
    from mta.base_model import DEFAULT_TARGET_MODULES, linear_shapes, load_base_model
    from mta.peft_io import save_peft_adapter

    model, _ = load_base_model(base_model)  # also converts the GGUF once, before any timing
    shapes = linear_shapes(model, DEFAULT_TARGET_MODULES)
    folders = []
    for n, anchor in enumerate(anchors):
        folder = registry.root / "anchors" / str(anchor["user_id"])
        folders.append(save_peft_adapter(random_adapter(shapes, 8, seed=n), folder))
    profiles = registry.root / "anchors" / "profiles.json"
    profiles.write_text(json.dumps(anchors), encoding="utf-8")
    registry.run("init")
    registry.run(
        "bank", "push", TASK, *folders, "--profiles", profiles,
        "--base-model", base_model, "--embedder", embedder,
    )  # fmt: skip


def _models(quick: bool, root: Path) -> tuple[str, str, str]:
    """(base model, embedder, label): the tiny pair in quick mode, else SmolLM2 + MiniLM."""
    if not quick:
        from mta.embedding import DEFAULT_EMBEDDER

        return "smollm2", DEFAULT_EMBEDDER, "SmolLM2-135M"
    from mta.tiny import make_tiny_embedder, make_tiny_llama

    model = make_tiny_llama(root / "tiny-model")
    return str(model), str(make_tiny_embedder(root / "tiny-embedder")), "tiny Llama"


def _ray_missing() -> str | None:
    """Why the Ray row cannot run, or None."""
    try:
        import ray  # noqa: F401 - only whether it imports
    except ImportError as error:
        return f"Ray is not importable ({error})"
    return None


def _phase_cells(summary: dict[str, Any]) -> list[Any]:
    """Mean fuse / train / commit seconds per adapted user."""
    phases = summary.get("phase_means") or {}
    return [phases.get(p, float("nan")) for p in ("fuse", "train", "commit")]


def _sizes(quick: bool) -> tuple[int, int, int]:
    """Users in (a), (b), (c): `MTA_BENCH_BULK_SIZES=A,B,C`, else small enough for 2 busy cores.

    SmolLM2 trains a 3-epoch stack in 3-10 s per user on an idle 2-core machine, and in
    minutes when several jobs share it; (b) and (c) must not exceed len(users) - A.
    """
    value = os.environ.get("MTA_BENCH_BULK_SIZES")
    if value:
        n_a, n_b, n_c = (int(v) for v in value.split(","))
        return n_a, n_b, min(n_c, n_b)
    return (3, 8, 8) if quick else (3, 6, 6)


def _rate(users: int, seconds: float) -> float:
    return 60.0 * users / seconds if seconds > 0 else float("nan")


def bench_bulk(quick: bool) -> Section:
    """Users per minute: one process per user (a), one batch process (b), Ray with 2 workers (c)."""
    n_a, n_b, n_c = _sizes(quick)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mta-bench-bulk-") as tmp:
        registry = _Registry(Path(tmp))
        base_model, embedder, label = _models(quick, Path(tmp))
        anchors, users = _lamp_users(max(USERS, n_a + n_b))
        _push_bank(registry, anchors, base_model, embedder)
        section = Section(
            f"Bulk personalization ({label}, LaMP movie tagging, shots 5, rank 1, 3 epochs)",
            ["run", "users", "wall s", "users/min", "ratio", "fuse s", "train s", "commit s"],
        )
        _measure(registry, users, (n_a, n_b, n_c), section)
    load_after = os.getloadavg()
    section.notes += [
        f"anchors: random rank-8 adapters whose profiles are {ANCHORS} real LaMP users; "
        f"users: {len(users)} LaMP entries of other real users (not the anchors')",
        f"(a) one `mta user adapt ID` process per user over {n_a} users; (b) one "
        f"`mta user adapt --from FILE` process over {n_b} others; (c) `--executor ray "
        f"--workers 2 --force` over {n_c} of them. Subsets keep the run bounded; users/min "
        "is per user, so the subsets compare; walls include process start and model load",
        "ratio: (b) users/min over (a) on row (b), (c) over (b) on row (c); targets "
        "(b) >= 1.4x (a) and (c) >= 0.9x (b) (issue 21)",
        "fuse/train/commit: mean seconds per adapted user inside the batch (from --json)",
        f"load average 1/5/15 min: before {_load(load_before)}, after {_load(load_after)}",
    ]
    return section


def _measure(
    registry: _Registry, users: list[dict], sizes: tuple[int, int, int], section: Section
) -> None:
    """Add the users in one batch, then time (a), (b) and (c) into `section`."""
    n_a, n_b, n_c = sizes
    users_file = registry.root / "users.json"
    users_file.write_text(json.dumps(users), encoding="utf-8")
    add_wall, added = registry.run("user", "add", "--from", users_file, "--bank", TASK)
    nan = float("nan")
    section.add("add --from (batched embedding)", len(added["done"]), add_wall,
                _rate(len(added["done"]), add_wall), nan, nan, nan, nan)  # fmt: skip
    ids = [str(u["user_id"]) for u in users]
    wall_a = sum(registry.run("user", "adapt", uid, *TRAIN)[0] for uid in ids[:n_a])
    rate_a = _rate(n_a, wall_a)
    section.add("(a) one process per user", n_a, wall_a, rate_a, nan, nan, nan, nan)
    batch = registry.ids_file("batch.txt", ids[n_a : n_a + n_b])
    wall_b, summary_b = registry.run("user", "adapt", "--from", batch, *TRAIN)
    rate_b = _rate(len(summary_b["done"]), wall_b)
    section.add("(b) one batch process", len(summary_b["done"]), wall_b, rate_b,
                rate_b / rate_a, *_phase_cells(summary_b))  # fmt: skip
    section.notes.append(
        f"(b) inside the process (model load excluded): {summary_b['users_per_minute']:.1f} "
        f"users/min, p50 {summary_b['seconds_p50']:.2f} s, p99 {summary_b['seconds_p99']:.2f} s; "
        f"a process per user costs {wall_a / n_a - wall_b / max(len(summary_b['done']), 1):.1f} s "
        "more per user (start, imports, model load), a fixed cost that training time dilutes"
    )
    missing = _ray_missing()
    if missing is not None:
        section.add("(c) Ray, 2 local workers", "not run", nan, nan, nan, nan, nan, nan)
        section.notes.append(f"(c) not run: {missing}")
        return
    subset = registry.ids_file("ray.txt", ids[n_a : n_a + n_c])
    wall_c, summary_c = registry.run(
        "user", "adapt", "--from", subset, *TRAIN, "--force", "--executor", "ray", "--workers", "2"
    )
    rate_c = _rate(len(summary_c["done"]), wall_c)
    section.add("(c) Ray, 2 local workers", len(summary_c["done"]), wall_c, rate_c,
                rate_c / rate_b, *_phase_cells(summary_c))  # fmt: skip
    failed = len(summary_b["failed"]) + len(summary_c["failed"])
    if failed:
        section.notes.append(f"{failed} user(s) failed in (b)/(c); see `--json` for reasons")


def _load(values: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)
