"""`mta serve`: refuses unsafe or impossible starts, and really serves over loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from mta.cli.app import app
from mta.registry.errors import InvalidInputError, NotInitializedError
from tests.server.conftest import ADMIN_TOKEN, READ_TOKEN, Registry


@pytest.fixture(autouse=True)
def _no_env_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MTA_READ_TOKEN", "MTA_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def _serve(*argv: str) -> BaseException | None:
    """Run `mta [location flags] serve [flags]`: location flags belong to the root command."""
    args, root = list(argv), []
    for flag in ("--db", "--store", "--cache-dir"):
        if flag in args:
            at = args.index(flag)
            root += args[at : at + 2]
            del args[at : at + 2]
    return CliRunner().invoke(app, [*root, "serve", *args]).exception


def test_refuses_to_start_without_tokens(registry: Registry) -> None:
    error = _serve("--db", registry.db_url, "--store", registry.store_url)
    assert isinstance(error, InvalidInputError) and "--insecure-no-auth" in str(error)


def test_refuses_contradictory_auth_flags(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MTA_READ_TOKEN", READ_TOKEN)
    error = _serve("--db", registry.db_url, "--store", registry.store_url, "--insecure-no-auth")
    assert isinstance(error, InvalidInputError) and "contradicts" in str(error)


def test_refuses_a_bad_tokens_file(registry: Registry, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"admin": ["short"]}))
    error = _serve("--db", registry.db_url, "--tokens-file", str(tokens))
    assert isinstance(error, InvalidInputError) and "at least 16" in str(error)


def test_refuses_an_uninitialized_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTA_ADMIN_TOKEN", ADMIN_TOKEN)
    error = _serve("--db", f"sqlite:///{tmp_path / 'none.db'}", "--store", f"file://{tmp_path}")
    assert isinstance(error, NotInitializedError) and "mta init" in str(error)
    assert not (tmp_path / "none.db").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serves_over_loopback_with_a_tokens_file(registry: Registry, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"read": [READ_TOKEN], "admin": [ADMIN_TOKEN]}))
    port = _free_port()
    argv = [
        sys.executable, "-m", "mta.cli.app", "--db", registry.db_url,
        "--store", registry.store_url, "--cache-dir", str(registry.cache_dir),
        "serve", "--port", str(port), "--tokens-file", str(tokens), "--log-level", "warning",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.endswith("_TOKEN")}
    process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):  # bounded wait for startup (imports take seconds)
            assert process.poll() is None, process.stderr.read()
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                threading.Event().wait(0.05)
        else:
            pytest.fail("mta serve never became healthy")
        assert httpx.get(f"{base}/v1/users/alice").status_code == 401
        read = {"Authorization": f"Bearer {READ_TOKEN}"}
        user = httpx.get(f"{base}/v1/users/alice", headers=read)
        assert user.status_code == 200 and user.json()["user_id"] == "alice"
        adapter = httpx.get(f"{base}/v1/users/alice/adapter", headers=read, timeout=60)
        assert adapter.status_code == 200 and adapter.headers["content-type"] == "application/x-tar"
        # A 200 KB header is answered (431, JSON), not a reset connection: mta serve gives
        # uvicorn a head buffer large enough for the app to see it.
        huge = httpx.get(
            f"{base}/v1/users/alice", headers={"Authorization": "Bearer " + "x" * 200_000}
        )
        assert huge.status_code == 431 and huge.json()["error"]["code"] == "headers_too_large"
        refused = httpx.delete(f"{base}/v1/users/alice", headers=read)
        assert refused.status_code == 403
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode in (0, -15)
