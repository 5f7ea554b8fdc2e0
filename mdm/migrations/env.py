"""Alembic environment: runs the same migrations on SQLite (batch mode) and PostgreSQL.

This is a composition root, like mdm/app.py: it imports every domain's tables for autogenerate.
"""

from alembic import context
from sqlalchemy import text
from sqlmodel import SQLModel

from mdm.database import open_database
from mdm.models_registry import import_all_models

import_all_models()
config = context.config
# Every replica may run `mdm serve` at once; only one may migrate at a time.
MIGRATION_LOCK_KEY = 0x6D646D  # "mdm"


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    database = open_database(config.get_main_option("sqlalchemy.url") or "")
    try:
        with database.write_engine.connect() as connection:
            _run(connection)
    finally:
        database.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


run_migrations_online()
