"""Bad settings and bad `bank build` arguments: one line naming what is wrong, before any work.

Every case asserts the exit code, exactly one `Error:` line, no traceback and an unchanged
registry (rows and store listing, see `assert_rejected` in tests/support.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import (
    TASK,
    CliEnv,
    Mta,
    assert_rejected,
    movie_user,
    push_bank_argv,
    write_users,
)

# A read command and a write command: neither may start with a bad setting.
COMMANDS = [["user", "list"], ["user", "add", "bob", "--bank", TASK, "--profile", "{profile}"]]


@pytest.mark.parametrize("value", ["abc", "-1", "0", "1.5", "1e9", "12abc", "1_000", "\u0661"])
@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_bad_cache_max_bytes_is_named(
    cli_env: CliEnv,
    mta: Mta,
    pushed_bank: dict,
    new_user_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    value: str,
    argv: list[str],
) -> None:
    monkeypatch.setenv("MTA_CACHE_MAX_BYTES", value)
    filled = [a.format(profile=new_user_file) for a in argv]
    result = assert_rejected(cli_env, mta, *filled)
    assert "MTA_CACHE_MAX_BYTES" in result.error_lines()[0]


BAD_DB_URLS = [
    "foo://bar",
    "not a url",
    "://",
    "http://example.com/db",
    "sqlite+nosuchdriver:///x.db",
    "mysql://user@localhost/db",
]


@pytest.mark.parametrize("url", BAD_DB_URLS)
@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_bad_db_url_is_named(
    cli_env: CliEnv,
    mta: Mta,
    pushed_bank: dict,
    new_user_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    argv: list[str],
) -> None:
    monkeypatch.setenv("MTA_DB_URL", url)
    filled = [a.format(profile=new_user_file) for a in argv]
    result = assert_rejected(cli_env, mta, *filled)
    assert "MTA_DB_URL" in result.error_lines()[0]


@pytest.mark.parametrize("url", ["foo://bar", "not a url"])
def test_bad_db_flag_is_one_line(cli_env: CliEnv, mta: Mta, url: str) -> None:
    assert_rejected(cli_env, mta, "--db", url, "user", "list")


def test_bad_store_url_is_one_line(
    cli_env: CliEnv, mta: Mta, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MTA_STORE_URL", "ftp://host/blobs")
    assert_rejected(cli_env, mta, "user", "list")


# --- bank build: every argument is checked before the first user is embedded -----------------


@pytest.fixture
def no_embedding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything is embedded (validation must come first)."""
    from mta.embedding import Embedder

    def refuse(self: Embedder, texts: object, **_: object) -> None:
        raise AssertionError("embedded users before validating the arguments")

    monkeypatch.setattr(Embedder, "encode", refuse)


def _build_argv(env: CliEnv, **changes: str) -> list[str]:
    data = write_users(env.root / "users.json", [movie_user(f"u{i}", 9) for i in range(5)])
    options = {
        "--data": str(data),
        "--anchors": "2",
        "--base-model": env.base_model,
        "--embedder": env.embedder,
        **changes,
    }
    return ["bank", "build", TASK, *(x for pair in options.items() for x in pair)]


def _folder_without_model(env: CliEnv) -> str:
    folder = env.root / "empty-model"
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("no model here", encoding="utf-8")
    return str(folder)


BUILD_CASES = {
    "base-model-missing": lambda env: {"--base-model": str(env.root / "no-model")},
    "base-model-relative-missing": lambda env: {"--base-model": "./no/such/model"},
    "base-model-gguf-missing": lambda env: {"--base-model": str(env.root / "m.gguf")},
    "base-model-empty-folder": lambda env: {"--base-model": _folder_without_model(env)},
    "embedder-missing": lambda env: {"--embedder": str(env.root / "no-embedder")},
    "embedder-empty-folder": lambda env: {"--embedder": _folder_without_model(env)},
    "too-many-anchors": lambda env: {"--anchors": "6"},
    "min-history-too-high": lambda env: {"--min-history": "10"},
    "data-missing": lambda env: {"--data": str(env.root / "users-missing.json")},
}


@pytest.mark.parametrize("case", list(BUILD_CASES))
def test_bank_build_validates_before_embedding(
    cli_env: CliEnv, mta: Mta, no_embedding: None, case: str
) -> None:
    assert_rejected(cli_env, mta, *_build_argv(cli_env, **BUILD_CASES[case](cli_env)))


def test_bank_build_on_an_uninitialized_registry_does_no_work(
    cli_env: CliEnv, mta: Mta, no_embedding: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = cli_env.root / "fresh.db"
    monkeypatch.setenv("MTA_DB_URL", f"sqlite:///{fresh}")
    result = assert_rejected(cli_env, mta, *_build_argv(cli_env))
    assert "mta init" in result.error_lines()[0]
    assert not fresh.exists()


def test_bank_push_validates_the_embedder_before_loading(
    cli_env: CliEnv, mta: Mta, tiny_shapes: dict, no_embedding: None
) -> None:
    argv = push_bank_argv(cli_env, tiny_shapes)
    argv[argv.index("--embedder") + 1] = str(cli_env.root / "no-embedder")
    assert_rejected(cli_env, mta, *argv)
