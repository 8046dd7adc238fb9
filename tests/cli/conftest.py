"""Fixtures for the CLI tests: a registry in tmp_path, a tiny embedder, a pushed bank."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mta.tiny import make_tiny_embedder
from tests.cli.cli_env import (
    Result,
    invoke,
    movie_user,
    registry_snapshot,
    write_anchor_adapters,
    write_users,
)

TASK = "movie_tagging"
ANCHOR_IDS = ("a1", "a2", "a3", "a4")


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 32-d sentence-transformer folder (fast stand-in for MiniLM)."""
    return make_tiny_embedder(tmp_path_factory.mktemp("tiny-embedder"))


@dataclass
class CliEnv:
    """Where one test's registry lives, and the models its banks use."""

    root: Path
    db_url: str
    store_url: str
    cache_dir: Path
    base_model: str
    embedder: str

    def env(self) -> dict[str, str]:
        """Environment variables that point a child `mta` process at this registry."""
        return {
            "MTA_DB_URL": self.db_url,
            "MTA_STORE_URL": self.store_url,
            "MTA_CACHE_DIR": str(self.cache_dir),
        }

    def snapshot(self) -> tuple[dict[str, list], frozenset[str]]:
        """All registry rows and store digests (equal snapshots: nothing changed)."""
        return registry_snapshot(self.db_url, self.store_url)


def make_cli_env(
    root: Path, db_url: str, store_url: str, base_model: Path, embedder: Path
) -> CliEnv:
    """A CliEnv whose cache lives under `root`."""
    return CliEnv(
        root=root,
        db_url=db_url,
        store_url=store_url,
        cache_dir=root / "cache",
        base_model=str(base_model),
        embedder=str(embedder),
    )


@pytest.fixture
def mta(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """`mta(*argv)` runs the CLI in this process and returns its exit code and output."""

    def run(*argv: Any) -> Result:
        return invoke([str(a) for a in argv], capsys)

    return run


@pytest.fixture
def cli_env(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_model_dir: Path,
    tiny_embedder_dir: Path,
    mta: Callable[..., Result],
) -> CliEnv:
    """An initialized SQLite + file registry in tmp_path, selected through the environment."""
    env = make_cli_env(
        tmp_path,
        f"sqlite:///{tmp_path / 'registry.db'}",
        f"file://{tmp_path / 'store'}",
        tiny_model_dir,
        tiny_embedder_dir,
    )
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    for key in ("MTA_BASE_MODEL", "MTA_EMBEDDER"):
        monkeypatch.delenv(key, raising=False)
    result = mta("init")
    assert result.code == 0, result.stderr
    return env


def push_bank_argv(env: CliEnv, tiny_shapes: dict[str, tuple[int, int]]) -> list[str]:
    """Write random rank-8 anchors + their profiles under env.root; the `bank push` argv."""
    dirs = write_anchor_adapters(env.root / "anchors", tiny_shapes, ANCHOR_IDS)
    profiles = write_users(env.root / "anchor_profiles.json", ANCHOR_IDS, items=9)
    return [
        "bank", "push", TASK, *map(str, dirs),
        "--profiles", str(profiles),
        "--base-model", env.base_model,
        "--embedder", env.embedder,
        "--json",
    ]  # fmt: skip


@pytest.fixture
def pushed_bank(
    cli_env: CliEnv,
    mta: Callable[..., Result],
    tiny_shapes: dict[str, tuple[int, int]],
) -> dict[str, Any]:
    """Version 1 of a movie_tagging bank pushed from four random rank-8 PEFT adapters."""
    result = mta(*push_bank_argv(cli_env, tiny_shapes))
    assert result.code == 0, result.stderr
    return result.json()


@pytest.fixture
def new_user_file(cli_env: CliEnv) -> Path:
    """A per-user JSON object for a new user 'alice' with 6 history items."""
    path = cli_env.root / "alice.json"
    path.write_text(json.dumps(movie_user("alice", 6, seed=1)), encoding="utf-8")
    return path
