"""Schema, migrations, schema check and the managed session on SQLite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from mta.registry.db import (
    check_schema,
    current_revision,
    head_revision,
    make_engine,
    make_session_factory,
    session_scope,
    table_names,
    upgrade,
)
from mta.registry.errors import AlreadyExistsError, NotInitializedError, RegistryError
from mta.registry.models import SqlBlob, utcnow

TABLES = ["anchors", "bank_aliases", "banks", "blobs", "eval_runs", "recipes", "stacks", "users"]


@pytest.fixture
def engine(tmp_path: Path):
    """A SQLite engine on a file that does not exist yet."""
    eng = make_engine(f"sqlite:///{tmp_path}/sub/registry.db")
    yield eng
    eng.dispose()


def test_check_schema_on_missing_db_says_run_init_and_creates_nothing(engine, tmp_path: Path):
    with pytest.raises(NotInitializedError, match="mta init"):
        check_schema(engine)
    assert not (tmp_path / "sub").exists()


def test_upgrade_creates_every_table_at_head_and_is_idempotent(engine):
    assert upgrade(engine) == head_revision()
    assert set(TABLES) <= set(table_names(engine))
    assert upgrade(engine) == head_revision()
    check_schema(engine)


def test_check_schema_rejects_db_without_registry_and_old_revision(engine, tmp_path: Path):
    (tmp_path / "sub").mkdir()
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE unrelated (x INTEGER)"))
    with pytest.raises(NotInitializedError, match="has no registry; run `mta init`"):
        check_schema(engine)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    with pytest.raises(NotInitializedError, match="schema is at 0000.*run `mta init`"):
        check_schema(engine)


def test_migration_matches_the_models(engine):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from mta.registry.models import Base

    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    assert diff == []


def test_downgrade_to_base_drops_everything(engine):
    from alembic import command

    from mta.registry.db import alembic_config

    upgrade(engine)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert current_revision(engine) is None
    assert not set(TABLES) & set(table_names(engine))


def test_migrations_are_run_by_path_without_importing_their_package(tmp_path: Path):
    """The registry finds the Alembic folder beside itself; `mta.migrations` stays unimported."""
    import mta.migrations
    from mta.registry.db import migrations_dir

    assert migrations_dir() == Path(mta.migrations.__file__).resolve().parent
    code = (
        "import sys\n"
        "from mta.registry import db\n"
        f"db.upgrade(db.make_engine('sqlite:///{tmp_path}/r.db'))\n"
        "assert not [m for m in sys.modules if m.startswith('mta.migrations')], sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_sqlite_pragmas_allow_parallel_writers(engine):
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def _blob(digest: str = "a" * 64) -> SqlBlob:
    return SqlBlob(digest=digest, algo="sha256", size=3, kind="profile", created_at=utcnow())


def test_session_scope_maps_unique_violation_and_rolls_back(engine):
    upgrade(engine)
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        session.add(_blob())
    with pytest.raises(AlreadyExistsError), session_scope(factory) as session:
        session.add(_blob("b" * 64))
        session.flush()
        session.add(_blob())
    with session_scope(factory) as session:
        # The failed transaction left nothing behind, not even its first insert.
        assert session.get(SqlBlob, "b" * 64) is None
        assert session.get(SqlBlob, "a" * 64) is not None


def test_foreign_keys_are_enforced(engine):
    from mta.registry.models import SqlUser

    upgrade(engine)
    factory = make_session_factory(engine)
    with pytest.raises(RegistryError, match="FOREIGN KEY"), session_scope(factory) as session:
        session.add(
            SqlUser(
                id="u",
                task="t",
                bank_id=99,
                profile_blob="c" * 64,
                embedding_blob="d" * 64,
                embedder="e",
                profile_items=1,
                created_at=utcnow(),
            )
        )


def test_session_scope_without_schema_says_run_init(engine, tmp_path: Path):
    (tmp_path / "sub").mkdir()
    with (
        pytest.raises(NotInitializedError, match="mta init"),
        session_scope(make_session_factory(engine)) as session,
    ):
        session.get(SqlBlob, "a" * 64)


def test_postgres_urls_use_psycopg3():
    from mta.registry.db import normalize_db_url

    assert normalize_db_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_db_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_db_url("sqlite:///x.db") == "sqlite:///x.db"
