"""Migrations run from empty on both databases, down and up again, and match the models."""

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

from mdm.database import open_database
from mdm.migrate import alembic_config, current_revision, head_revision, upgrade
from mdm.models_registry import import_all_models


def test_from_empty_to_head_and_back(database_url):
    # The fixture's database is already at head; go down to empty and up again.
    config = alembic_config(database_url)
    command.downgrade(config, "base")
    database = open_database(database_url)
    try:
        assert current_revision(database.read_engine) is None
        assert "device" not in inspect(database.read_engine).get_table_names()
        upgrade(database_url)
        assert current_revision(database.read_engine) == head_revision()
        with database.read_engine.connect() as connection:
            categories = connection.execute(text("SELECT count(*) FROM access_policy")).scalar_one()
            head = connection.execute(text("SELECT last_seq FROM audit_head")).scalar_one()
        assert categories == 6
        assert head == 0
        upgrade(database_url)  # running it again is harmless
    finally:
        database.dispose()


def test_migrations_match_the_models(database_url):
    import_all_models()
    database = open_database(database_url)
    try:
        with database.read_engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    finally:
        database.dispose()
    assert differences == []


def test_readyz_says_when_the_schema_is_behind(database_url, tmp_path):
    from fastapi.testclient import TestClient

    from mdm.app import create_app
    from mdm.settings import Settings

    command.downgrade(alembic_config(database_url), "base")
    app = create_app(Settings(data_dir=tmp_path, database_url=database_url))
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert "mdm db upgrade" in response.json()["detail"]
