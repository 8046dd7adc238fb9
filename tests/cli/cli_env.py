"""Helpers shared by the CLI tests and the integration tests: data, anchors, runners.

Not a test module: `tests/cli/conftest.py` and `tests/integration/` import it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mta.tasks.movie_tagging import MOVIE_TAGS, QUESTION

_WORDS = (
    "space", "crew", "robot", "planet", "war", "love", "city", "detective", "secret",
    "family", "island", "king", "time", "future", "past", "dream", "ghost", "school",
    "music", "heist", "prison", "river", "storm", "village", "doctor",
)  # fmt: skip


def movie_user(user_id: str, items: int, seed: int) -> dict[str, Any]:
    """A synthetic movie-tagging user in the per-user format, with one query."""
    rng = random.Random(f"{user_id}/{seed}")
    # Each user prefers two tags, so users cluster and anchors differ.
    liked = rng.sample(MOVIE_TAGS, 2)

    def item(index: int) -> dict[str, str]:
        words = " ".join(rng.choice(_WORDS) for _ in range(12))
        return {"id": f"{user_id}-{index}", "tag": rng.choice(liked), "description": words}

    profile = [item(i) for i in range(items)]
    held_out = item(items)
    query_input = QUESTION.format(tags=", ".join(MOVIE_TAGS), description=held_out["description"])
    return {
        "user_id": user_id,
        "profile": profile,
        "query": [{"id": f"{user_id}-q", "input": query_input, "gold": held_out["tag"]}],
    }


def write_users(path: Path, user_ids: Sequence[str], *, items: int = 9, seed: int = 0) -> Path:
    """Write synthetic users as one per-user JSON list."""
    path.write_text(json.dumps([movie_user(u, items, seed) for u in user_ids]), encoding="utf-8")
    return path


def write_anchor_adapters(
    root: Path,
    shapes: Mapping[str, tuple[int, int]],
    anchor_ids: Sequence[str],
    *,
    rank: int = 8,
    base_model: str | None = None,
) -> list[Path]:
    """Save one random rank-`rank` PEFT adapter per anchor id into `root/<anchor id>`."""
    from mta.peft_io import save_peft_adapter
    from tests.fixtures_model import random_adapter

    dirs = []
    for seed, anchor_id in enumerate(anchor_ids):
        adapter = random_adapter(dict(shapes), rank, seed=100 + seed, scale=2.0)
        dirs.append(save_peft_adapter(adapter, root / anchor_id, base_model=base_model))
    return dirs


@dataclass
class Result:
    """What one CLI run produced."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout parsed as JSON."""
        return json.loads(self.stdout)

    def error_lines(self) -> list[str]:
        """The stderr lines that start with `Error:`."""
        return [line for line in self.stderr.splitlines() if line.startswith("Error:")]


def invoke(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> Result:
    """Run `mta argv` in this process through `main` (so errors map to exit codes)."""
    from mta.cli.app import main

    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def mta_command(*argv: str | Path) -> list[str]:
    """The argv that runs `mta` in a fresh interpreter of this virtualenv."""
    return [sys.executable, "-m", "mta.cli.app", *(str(a) for a in argv)]


def run_subprocess(
    argv: Sequence[str | Path],
    env: Mapping[str, str],
    *,
    cwd: Path | None = None,
    timeout: float = 600,
) -> Result:
    """Run `mta argv` as a child process with `env` added to the environment."""
    completed = subprocess.run(
        mta_command(*argv),
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)


def registry_snapshot(db_url: str, store_url: str) -> tuple[dict[str, list], frozenset[str]]:
    """Every row of every registry table, and every blob digest in the store.

    Two equal snapshots mean a command changed nothing.
    """
    from sqlalchemy import create_engine, inspect, text

    from mta.storage import open_store

    engine = create_engine(db_url)
    try:
        rows: dict[str, list] = {}
        with engine.connect() as connection:
            for table in sorted(inspect(connection).get_table_names()):
                result = connection.execute(text(f'SELECT * FROM "{table}"'))
                rows[table] = sorted(repr(tuple(r)) for r in result)
    finally:
        engine.dispose()
    digests = frozenset(info.digest for info in open_store(store_url).iter_blobs())
    return rows, digests
