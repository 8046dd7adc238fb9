"""Bad settings and bad `bank build` arguments: one line naming what is wrong, before any work.

Every case asserts the exit code, exactly one `Error:` line, no traceback and an unchanged
registry (rows and store listing, see `assert_rejected` in tests/support.py).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
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


@pytest.mark.parametrize("argv", [*COMMANDS, ["init"]], ids=lambda argv: " ".join(argv[:2]))
def test_a_db_file_that_is_not_a_database_is_named(
    cli_env: CliEnv,
    mta: Mta,
    pushed_bank: dict,
    new_user_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
) -> None:
    # Before: SQLAlchemy's DatabaseError traceback ("file is not a database").
    not_a_db = cli_env.root / "notes.txt"
    not_a_db.write_text("these are notes, not a registry\n" * 50, encoding="utf-8")
    monkeypatch.setenv("MTA_DB_URL", f"sqlite:///{not_a_db}")
    filled = [a.format(profile=new_user_file) for a in argv]
    line = assert_rejected(cli_env, mta, *filled).error_lines()[0]
    assert str(not_a_db) in line and "not an SQLite database" in line


def _add_and_fuse_alice(mta: Mta, profile: Path) -> None:
    assert mta("user", "add", "alice", "--bank", TASK, "--profile", profile).code == 0
    assert mta("user", "fuse", "alice").code == 0


def _store_urls(env: CliEnv) -> dict[str, str]:
    empty = env.root / "empty-folder"
    empty.mkdir(exist_ok=True)
    a_file = env.root / "a-file"
    a_file.write_text("not a store", encoding="utf-8")
    return {
        "proc": "file:///proc/nope",
        "missing": f"file://{env.root / 'no-such-store'}",
        "empty-folder": f"file://{empty}",
        "a-file": f"file://{a_file}",
    }


STORE_COMMANDS = [["user", "list"], ["user", "export", "alice", "--out", "{root}/out"], ["fsck"]]


@pytest.mark.parametrize("kind", ["proc", "missing", "empty-folder", "a-file"])
@pytest.mark.parametrize("argv", STORE_COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_a_store_url_naming_no_store_says_so(
    cli_env: CliEnv,
    mta: Mta,
    pushed_bank: dict,
    new_user_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    argv: list[str],
) -> None:
    # Before: `user list` worked, export and fsck exited 3 ("blob ... not found": run fsck).
    _add_and_fuse_alice(mta, new_user_file)
    url = _store_urls(cli_env)[kind]
    monkeypatch.setenv("MTA_STORE_URL", url)
    filled = [a.format(root=cli_env.root) for a in argv]
    line = assert_rejected(cli_env, mta, *filled).error_lines()[0]
    assert url in line and "mta init" in line and "MTA_STORE_URL" in line


@pytest.mark.parametrize("under", [False, True], ids=["a-file", "under-a-file"])
@pytest.mark.parametrize(
    "argv", [["user", "list"], ["user", "export", "alice", "--out", "{root}/out"]],
    ids=lambda argv: " ".join(argv[:2]),
)  # fmt: skip
def test_a_cache_dir_that_is_a_file_is_named(
    cli_env: CliEnv,
    mta: Mta,
    pushed_bank: dict,
    new_user_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    under: bool,
    argv: list[str],
) -> None:
    # Before: export failed with "[Errno 20] Not a directory", naming no path.
    _add_and_fuse_alice(mta, new_user_file)
    a_file = cli_env.root / "cache-file"
    a_file.write_text("not a folder", encoding="utf-8")
    monkeypatch.setenv("MTA_CACHE_DIR", str(a_file / "sub" if under else a_file))
    filled = [a.format(root=cli_env.root) for a in argv]
    line = assert_rejected(cli_env, mta, *filled).error_lines()[0]
    assert str(a_file) in line and "MTA_CACHE_DIR" in line


@pytest.mark.parametrize("flag", ["--db", "--store", "--cache-dir"])
def test_an_empty_location_flag_is_refused(cli_env: CliEnv, mta: Mta, flag: str) -> None:
    # Before: the empty value fell back to the environment variable, silently.
    result = assert_rejected(cli_env, mta, flag, "", "user", "list", code=2)
    assert f"'{flag}'" in result.error_lines()[0]


# --- mta serve: an address it cannot listen on ------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another socket is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("where", ["busy-port", "unknown-host"])
def test_serve_on_an_address_it_cannot_use_is_one_line(
    cli_env: CliEnv, mta: Mta, monkeypatch: pytest.MonkeyPatch, busy_port: int, where: str
) -> None:
    # Before: uvicorn logged the failure and exited 3, with no `Error:` line.
    for name in ("MTA_READ_TOKEN", "MTA_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    host = "127.0.0.1" if where == "busy-port" else "no-such-host.invalid"
    result = assert_rejected(
        cli_env, mta, "serve", "--insecure-no-auth", "--host", host, "--port", busy_port
    )
    assert host in result.error_lines()[0]


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
    "seed-beyond-k-means": lambda env: {"--seed": str(2**32)},
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
