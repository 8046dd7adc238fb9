"""Fixtures for the CLI tests: a registry in tmp_path, a pushed bank, a new user's profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support import CliEnv, Mta, make_cli_env, movie_user, ok, push_bank_argv, write_users


@pytest.fixture
def cli_env(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_model_dir: Path,
    tiny_embedder_dir: Path,
    mta: Mta,
) -> CliEnv:
    """An initialized SQLite + file registry in tmp_path, selected through the environment."""
    from mta.registry.context import RegistryContext

    db_url, store_url, _ = RegistryContext.folder_locations(tmp_path)
    env = make_cli_env(tmp_path, db_url, store_url, tiny_model_dir, tiny_embedder_dir)
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    for key in ("MTA_BASE_MODEL", "MTA_EMBEDDER"):
        monkeypatch.delenv(key, raising=False)
    result = mta("init")
    assert result.code == 0, result.stderr
    return env


@pytest.fixture
def pushed_bank(
    cli_env: CliEnv, mta: Mta, tiny_shapes: dict[str, tuple[int, int]]
) -> dict[str, Any]:
    """Version 1 of a movie_tagging bank pushed from four random rank-8 PEFT adapters."""
    return ok(mta(*push_bank_argv(cli_env, tiny_shapes)))


@pytest.fixture
def new_user_file(cli_env: CliEnv) -> Path:
    """A per-user JSON object for a new user 'alice' with 6 history items."""
    return write_users(cli_env.root / "alice.json", movie_user("alice", 6, seed=1))
