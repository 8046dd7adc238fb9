"""CLI-level integration fixtures: the same registry flow on PostgreSQL + S3."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.cli_env import Result, movie_user
from tests.cli.conftest import CliEnv, make_cli_env, mta, tiny_embedder_dir  # noqa: F401


@pytest.fixture
def remote_env(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pg_db_url: str,
    s3_store_url: str,
    tiny_model_dir: Path,
    tiny_embedder_dir: Path,  # noqa: F811 - the fixture imported above
    mta: Callable[..., Result],  # noqa: F811
) -> CliEnv:
    """An initialized registry on a fresh PostgreSQL database and S3 prefix."""
    env = make_cli_env(tmp_path, pg_db_url, s3_store_url, tiny_model_dir, tiny_embedder_dir)
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    result = mta("init", "--json")
    assert result.code == 0, result.stderr
    return env


@pytest.fixture
def remote_profile(remote_env: CliEnv) -> Path:
    """A per-user JSON object for user 'alice'."""
    path = remote_env.root / "alice.json"
    path.write_text(json.dumps(movie_user("alice", 6, seed=1)), encoding="utf-8")
    return path
