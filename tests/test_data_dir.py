"""The data directory holds learners' names (the SQLite file) and keys: only the service's user reads it
(issue 9, L5)."""

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mdm.app import create_app
from mdm.migrate import upgrade
from mdm.settings import Settings


@pytest.fixture
def everyday_umask() -> Iterator[None]:
    """The umask most systems run services with, which leaves new files readable by every local user."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def serve_and_check(data_dir: Path) -> None:
    """What `mdm serve` does on a data directory; checked while the service holds the database open,
    since SQLite's -wal and -shm files exist only then."""
    settings = Settings(data_dir=data_dir, scheduler="off")
    upgrade(settings.resolved_database_url)
    app = create_app(settings)
    with TestClient(app) as client, app.state.database.read_engine.connect() as connection:
        assert client.get("/readyz").status_code == 200
        connection.exec_driver_sql("SELECT count(*) FROM person")
        assert mode(data_dir) == 0o700
        for name in ("mdm.sqlite3", "mdm.sqlite3-wal", "mdm.sqlite3-shm"):
            assert mode(data_dir / name) == 0o600, name
        # Every file the service keeps in it is private too (certificates are public, and sit in ca/, 0700).
        for path in data_dir.iterdir():
            assert mode(path) & 0o077 == 0, path.name


@pytest.mark.usefixtures("everyday_umask")
def test_a_fresh_data_directory_and_database_are_private(tmp_path):
    serve_and_check(tmp_path / "data")


@pytest.mark.usefixtures("everyday_umask")
def test_an_existing_open_data_directory_is_tightened_at_start(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    upgrade(f"sqlite:///{data_dir / 'mdm.sqlite3'}")
    (data_dir / "mdm.sqlite3").chmod(0o644)  # as an older version, or a copy from a backup, left it
    serve_and_check(data_dir)
