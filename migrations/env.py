"""Alembic environment: runs on a connection passed in `config.attributes`, or opens one.

`mta init` (registry.db.upgrade) passes its own connection so migrations share the engine's
SQLite settings; developers can also run `alembic upgrade head` from the repository root
(alembic.ini), which reads the URL from `MTA_DB_URL` or `sqlalchemy.url`.
"""

from __future__ import annotations

from alembic import context

from mta.registry.db import default_db_url, make_engine
from mta.registry.models import Base

config = context.config
target_metadata = Base.metadata


def _configure_and_run(connection: object) -> None:
    """Configure the migration context on `connection` and run the migrations."""
    # Batch mode rewrites ALTERs as copy-and-move on SQLite, which cannot alter constraints.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (`alembic upgrade head --sql`)."""
    url = config.get_main_option("sqlalchemy.url") or default_db_url()
    context.configure(
        url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run against a live database."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or default_db_url())
    try:
        with engine.begin() as own:
            _configure_and_run(own)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
