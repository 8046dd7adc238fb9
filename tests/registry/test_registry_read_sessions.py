"""Read-only sessions on SQLite: reads neither wait for a writer nor hold one up."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from mta.registry import db
from mta.registry.banks.versions import list_banks
from mta.registry.context import RegistryContext
from mta.registry.db import make_engine, make_session_factory, session_scope, upgrade
from mta.registry.errors import RegistryError
from mta.registry.maintenance.report import storage_report
from mta.registry.models import SqlBlob, utcnow

# A writer that has to wait for the lock gives up after this long ("database is locked"),
# so a read that took the write lock fails the test quickly instead of hanging a minute.
SHORT_BUSY_MS = 1500


@pytest.fixture
def short_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines made from now on wait at most SHORT_BUSY_MS for a lock."""
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", SHORT_BUSY_MS)


@pytest.fixture
def engine(tmp_path: Path, short_busy: None) -> Iterator[Engine]:
    """A migrated SQLite registry database holding one blob row."""
    eng = make_engine(f"sqlite:///{tmp_path}/registry.db")
    upgrade(eng)
    with session_scope(make_session_factory(eng)) as session:
        session.add(_blob("a"))
    yield eng
    eng.dispose()


def _blob(char: str) -> SqlBlob:
    return SqlBlob(digest=char * 64, algo="sha256", size=3, kind="profile", created_at=utcnow())


def _count(session) -> int:
    return int(session.scalar(select(func.count()).select_from(SqlBlob)))


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another process's writer: the write lock taken and an insert not yet committed."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO blobs (digest, algo, size, kind, created_at) "
        "VALUES (?, 'sha256', 3, 'profile', '2026-01-01')",
        ("z" * 64,),
    )
    return conn


def test_read_session_reads_while_another_process_holds_the_write_lock(engine, tmp_path):
    writer = _hold_write_lock(tmp_path / "registry.db")
    try:
        with session_scope(make_session_factory(engine), read_only=True) as session:
            assert _count(session) == 1  # the committed state; the pending insert is unseen
        # A writing session in the same situation waits for the lock, then gives up.
        with (
            pytest.raises(RegistryError, match="locked"),
            session_scope(make_session_factory(engine)) as session,
        ):
            session.add(_blob("b"))
    finally:
        writer.rollback()
        writer.close()


def test_open_read_session_does_not_hold_up_a_writer(engine, tmp_path):
    other = make_engine(f"sqlite:///{tmp_path}/registry.db")  # another process's registry
    try:
        with session_scope(make_session_factory(engine), read_only=True) as reader:
            assert _count(reader) == 1
            with session_scope(make_session_factory(other)) as writer:
                writer.add(_blob("b"))
            # The reader keeps the snapshot it started with until its transaction ends.
            assert _count(reader) == 1
        with session_scope(make_session_factory(engine), read_only=True) as session:
            assert _count(session) == 2
    finally:
        other.dispose()


def test_a_write_in_a_read_session_fails_and_changes_nothing(engine):
    factory = make_session_factory(engine)
    with (
        pytest.raises(RegistryError, match="readonly"),
        session_scope(factory, read_only=True) as session,
    ):
        session.add(_blob("b"))
    # The pooled connection is writable again for the next writing session.
    with session_scope(factory) as session:
        assert _count(session) == 1
        session.add(_blob("c"))
    with session_scope(factory, read_only=True) as session:
        assert {b.digest[0] for b in session.scalars(select(SqlBlob))} == {"a", "c"}


def test_registry_reads_answer_while_a_writer_holds_the_lock(
    bank_registry: RegistryContext, tmp_path: Path, short_busy: None
):
    # A fresh context so its engine takes the short busy timeout (the fixture's was made before).
    ctx = RegistryContext.open(bank_registry.db_url, bank_registry.store_url, tmp_path / "cache")
    path = Path(bank_registry.db_url.removeprefix("sqlite:///"))
    writer = _hold_write_lock(path)
    try:
        assert [b.version for b in list_banks(ctx)] == [1]
        assert storage_report(ctx)["banks"] == 1
    finally:
        writer.rollback()
        writer.close()
        ctx.close()


def test_a_read_session_that_cannot_connect_fails_as_one_registry_error():
    # Port 1 on loopback refuses at once; the failure surfaces when the read session
    # procures its connection, which must be mapped like any other database error.
    engine = make_engine("postgresql://mta:mta@127.0.0.1:1/none")
    try:
        with (
            pytest.raises(RegistryError, match="database error"),
            session_scope(make_session_factory(engine), read_only=True),
        ):
            pass
    finally:
        engine.dispose()
