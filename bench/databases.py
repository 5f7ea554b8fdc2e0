"""A fresh, empty database for each benchmark run, so figures never depend on what ran before."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mdm.bootstrap import Runtime, bootstrap
from mdm.settings import Settings


@contextmanager
def fresh_database(server_url: str | None, folder: Path) -> Iterator[str]:
    """SQLite in `folder` by default; with a PostgreSQL URL, a new database on that server, dropped after."""
    if not server_url or make_url(server_url).get_backend_name() == "sqlite":
        yield f"sqlite:///{folder / 'bench.sqlite3'}"
        return
    name = f"mdm_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def runtime_for(url: str, folder: Path) -> Runtime:
    """What the service runs with on this database, keys in `folder`: from the bootstrap, as in every process."""
    return bootstrap(Settings(data_dir=folder, database_url=url, scheduler="off"))
