"""Engines, managed sessions and schema migration for the registry database.

SQLite (the default) is opened in WAL mode with a busy timeout, foreign keys and
`secure_delete` on (`erase_freed_pages` ends a user's deletion with a WAL checkpoint). A
writing transaction begins with `BEGIN IMMEDIATE`, so several `mta user adapt` processes can
write to one file: a writer waits for the lock instead of failing on a read-to-write lock
upgrade. A read-only session (`session_scope(..., read_only=True)`) begins a deferred
transaction under `PRAGMA query_only` instead: it takes no lock, so reads neither wait for
a writer nor hold writers up (WAL gives it a snapshot), and a write attempted in it fails.
PostgreSQL URLs (`postgresql://`, `postgres://`) are routed to the psycopg 3 driver.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from mta.errors import one_line
from mta.registry.errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotInitializedError,
    RegistryError,
)

DEFAULT_DB_URL = "sqlite:///.mta/registry.db"
DB_URL_ENV = "MTA_DB_URL"
_DB_URL_SOURCE = f"the database URL (--db / {DB_URL_ENV})"
SQLITE_BUSY_TIMEOUT_MS = 60_000
# Execution option marking a connection's transactions as read-only (see `_sqlite_on_begin`).
READ_ONLY_OPTION = "mta_read_only"
_UNIQUE_SQLSTATE = "23505"


def normalize_db_url(url: str) -> str:
    """Route PostgreSQL URLs to psycopg 3 (the driver we install); leave others unchanged."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def parse_db_url(url: str) -> URL:
    """Parse a registry URL and find its database dialect, without connecting.

    Raises:
        InvalidInputError: one line naming ``MTA_DB_URL``: not a URL, or an unknown database.
    """
    try:
        parsed = make_url(normalize_db_url(url))
    except (exc.ArgumentError, ValueError):
        # Not echoed: an unparsable URL may still hold a password.
        raise InvalidInputError(
            f"{_DB_URL_SOURCE} is not a database URL; expected e.g. sqlite:///PATH "
            "or postgresql://USER@HOST/DB"
        ) from None
    try:
        parsed.get_dialect()
    except exc.NoSuchModuleError:
        raise InvalidInputError(
            f"{_DB_URL_SOURCE} names an unknown database {parsed.drivername!r}; "
            "use sqlite:///PATH or postgresql://USER@HOST/DB"
        ) from None
    return parsed


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, or None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def make_engine(url: str) -> Engine:
    """Create an engine for a registry URL.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///.mta/registry.db`` or
            ``postgresql+psycopg://user:pw@host/db``.

    Returns:
        The engine; SQLite connections get WAL, busy timeout, foreign keys, immediate transactions.

    Raises:
        InvalidInputError: the URL is malformed, or its database or driver is unknown here.
    """
    parsed = parse_db_url(url)
    try:
        if parsed.get_backend_name() != "sqlite":
            return create_engine(parsed, pool_pre_ping=True)
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    except (ImportError, exc.ArgumentError) as error:
        # e.g. mysql:// without its DBAPI module, or an option the driver refuses.
        raise InvalidInputError(
            f"{_DB_URL_SOURCE} cannot be used ({parsed.drivername}): {error}"
        ) from None
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings."""
    # Take transaction control away from pysqlite so the "begin" hook decides how to begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # Deleted rows are overwritten with zeros, not merely unlinked: a forgotten user's id and
    # rows must not survive in free space of the file (see `erase_freed_pages`).
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def erase_freed_pages(engine: Engine) -> bool:
    """Make deleted rows unrecoverable from the SQLite files; PostgreSQL: nothing (see README).

    With `secure_delete` the deleting transaction writes zeroed pages, but into the WAL; the
    older page images there (and the database file's copies until checkpointed) still hold
    the rows. `wal_checkpoint(TRUNCATE)` copies the zeroed pages into the database file and
    truncates the WAL to zero bytes. It waits (busy timeout) for readers of older snapshots.

    Returns:
        False when a reader in another process kept the checkpoint from completing (the old
        page images stay in the WAL until the next complete checkpoint); True otherwise.
    """
    if engine.dialect.name != "sqlite" or sqlite_path(str(engine.url)) is None:
        return True
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        # A pooled connection may come from a read session, which left query_only on.
        cursor.execute("PRAGMA query_only=OFF")
        # Outside any transaction (isolation_level None): a checkpoint cannot run inside one.
        busy, _log, _done = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        cursor.close()
    finally:
        connection.close()
    return not busy


def _sqlite_on_begin(connection: Any) -> None:
    """Writers begin with the write lock (a deferred upgrade can deadlock); readers take none."""
    # query_only is a per-connection flag, so every begin sets it: pooled connections alternate.
    if connection.get_execution_options().get(READ_ONLY_OPTION):
        connection.exec_driver_sql("PRAGMA query_only=ON")
        connection.exec_driver_sql("BEGIN")
    else:
        connection.exec_driver_sql("PRAGMA query_only=OFF")
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def is_unique_violation(error: exc.IntegrityError) -> bool:
    """Whether a DB integrity error is a unique/primary-key violation (not e.g. a foreign key)."""
    orig = error.orig
    if getattr(orig, "sqlstate", None) == _UNIQUE_SQLSTATE:
        return True
    text = str(orig).upper()
    return "UNIQUE CONSTRAINT" in text or "PRIMARY KEY" in text or "DUPLICATE KEY" in text


@contextmanager
def session_scope(factory: sessionmaker[Session], *, read_only: bool = False) -> Iterator[Session]:
    """A session that commits on success, rolls back on error and always closes.

    Args:
        factory: the session factory.
        read_only: on SQLite, read without taking the write lock; a write then fails
            (PostgreSQL reads take no lock anyway, and the flag changes nothing there).

    Raises:
        AlreadyExistsError: a unique constraint refused the write.
        NotInitializedError: the schema is missing (run `mta init`).
        RegistryError: any other database error, as one line.
    """
    session = factory()
    try:
        if read_only:
            # Options apply when the session procures its connection, before the transaction
            # begins; inside the try, so a failure to connect is mapped like any other.
            session.connection(execution_options={READ_ONLY_OPTION: True})
        yield session
        session.commit()
    except exc.IntegrityError as error:
        session.rollback()
        if is_unique_violation(error):
            raise AlreadyExistsError(one_line(error.orig)) from error
        raise RegistryError(f"database refused the write: {one_line(error.orig)}") from error
    except (exc.OperationalError, exc.ProgrammingError) as error:
        session.rollback()
        if "no such table" in str(error.orig) or "does not exist" in str(error.orig):
            raise NotInitializedError("the registry has no schema; run `mta init`") from error
        raise RegistryError(f"database error: {one_line(error.orig)}") from error
    except exc.DatabaseError as error:
        session.rollback()
        raise unreadable_database(session.get_bind(), error) from error
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# The Alembic script folder ships beside this package: `migrations/` next to `registry/` in
# the source tree (editable installs map both folders in place), `mta/migrations/` next to
# `mta/registry/` in a wheel. Alembic loads env.py and the revisions from it by path, so the
# registry never imports `mta.migrations`, which itself imports the registry (env.py).
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def migrations_dir() -> Path:
    """The Alembic script directory shipped with this code.

    Raises:
        RegistryError: the folder is missing (a broken install).
    """
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise RegistryError(
            f"the registry migrations are missing from {MIGRATIONS_DIR}; reinstall mta-registry"
        )
    return MIGRATIONS_DIR


def alembic_config(connection: Any | None = None) -> Any:
    """An Alembic Config pointing at our migrations, optionally bound to a live connection."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration revision shipped with this code."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RegistryError(f"no migrations found in {migrations_dir()}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when it has no registry schema."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        connection.execution_options(**{READ_ONLY_OPTION: True})
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Run the Alembic migrations up to `revision` on `engine`; idempotent.

    Returns:
        The revision the database is at afterwards.
    """
    from alembic import command

    path = sqlite_path(str(engine.url))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), revision)
    except exc.OperationalError as error:
        raise RegistryError(
            f"cannot migrate the registry at {_redacted(engine)}: {one_line(error.orig)}"
        ) from error
    except exc.DatabaseError as error:
        raise unreadable_database(engine, error) from error
    return current_revision(engine) or ""


def check_schema(engine: Engine) -> None:
    """Make sure the database is at the head revision.

    Raises:
        NotInitializedError: no registry there, or an older schema; the message says to run
            `mta init` (which migrates).
    """
    path = sqlite_path(str(engine.url))
    if path is not None and not path.exists():
        # Connecting would create an empty file; a read-only command must not.
        raise NotInitializedError(f"no registry at {path}; run `mta init`")
    try:
        current = current_revision(engine)
    except exc.OperationalError as error:
        raise NotInitializedError(f"cannot open the registry ({one_line(error.orig)})") from error
    except exc.DatabaseError as error:
        raise unreadable_database(engine, error) from error
    head = head_revision()
    if current is None:
        raise NotInitializedError(
            f"the database at {_redacted(engine)} has no registry; run `mta init`"
        )
    if current != head:
        raise NotInitializedError(
            f"the registry schema is at {current}, this code needs {head}; run `mta init`"
        )


def unreadable_database(engine: Any, error: exc.DatabaseError) -> RegistryError:
    """One line for a database file that opened but cannot be read (not a database, damaged).

    Args:
        engine: the engine (or connection) whose URL names the database.
        error: SQLAlchemy's wrapper of the driver's error.

    Returns:
        InvalidInputError when a SQLite URL names a file that is not an SQLite database (a
        wrong --db / MTA_DB_URL), else RegistryError with the driver's message.
    """
    path = sqlite_path(str(engine.url))
    message = one_line(error.orig)
    if path is not None and "not a database" in message:
        return InvalidInputError(f"{path} is not an SQLite database; check {_DB_URL_SOURCE}")
    return RegistryError(f"cannot read the registry at {_redacted(engine)}: {message}")


def table_names(engine: Engine) -> list[str]:
    """Tables present in the database (for tests and diagnostics)."""
    return sorted(inspect(engine).get_table_names())


def _redacted(engine: Engine) -> str:
    """The engine URL with its password hidden."""
    return engine.url.render_as_string(hide_password=True)


def default_db_url() -> str:
    """`MTA_DB_URL`, else a SQLite file under `.mta/`."""
    return os.environ.get(DB_URL_ENV) or DEFAULT_DB_URL
