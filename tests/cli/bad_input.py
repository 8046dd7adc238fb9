"""What every bad-input test asserts: the exit code, one `Error:` line, and nothing changed.

Not a test module: the bad-input tests of the CLI and of the HTTP API import it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cli.cli_env import Result

Mta = Callable[..., Result]
RegistryDump = tuple[list[str], list[tuple[str, int]]]


def sqlite_dump(db_url: str) -> list[str]:
    """Every statement that recreates a SQLite registry: schema and rows, in a stable order."""
    path = db_url.removeprefix("sqlite:///")
    connection = sqlite3.connect(path)
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


def store_listing(store_url: str) -> list[tuple[str, int]]:
    """Every file under a local store folder with its size, sorted by path."""
    root = Path(store_url.removeprefix("file://"))
    return sorted(
        (str(path.relative_to(root)), path.stat().st_size)
        for path in root.rglob("*")
        if path.is_file()
    )


def registry_dump(db_url: str, store_url: str) -> RegistryDump:
    """The database dump and the store listing; equal dumps mean nothing changed."""
    return sqlite_dump(db_url), store_listing(store_url)


def assert_rejected(env: Any, mta: Mta, *argv: Any, code: int = 1) -> Result:
    """Run argv; assert the exit code, one `Error:` line, no traceback and an unchanged registry.

    Args:
        env: a CliEnv (anything with `db_url` and `store_url` of a SQLite + file registry).
        mta: the in-process CLI runner fixture.
        argv: the command line.
        code: the expected exit code.
    """
    before = registry_dump(env.db_url, env.store_url)
    result = mta(*argv)
    assert result.code == code, (argv, result.code, result.stdout, result.stderr)
    assert len(result.error_lines()) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert registry_dump(env.db_url, env.store_url) == before, f"{argv} changed the registry"
    return result
