"""CLI-level integration fixtures: the same registry flow on PostgreSQL + S3."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import CliEnv, Mta, make_cli_env, movie_user, ok, write_users


@pytest.fixture
def remote_env(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pg_db_url: str,
    s3_store_url: str,
    tiny_model_dir: Path,
    tiny_embedder_dir: Path,
    mta: Mta,
) -> CliEnv:
    """An initialized registry on a fresh PostgreSQL database and S3 prefix."""
    env = make_cli_env(tmp_path, pg_db_url, s3_store_url, tiny_model_dir, tiny_embedder_dir)
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    ok(mta("init", "--json"))
    return env


@pytest.fixture
def remote_profile(remote_env: CliEnv) -> Path:
    """A per-user JSON object for user 'alice'."""
    return write_users(remote_env.root / "alice.json", movie_user("alice", 6, seed=1))
