"""Test set-up: every database test runs on SQLite and on PostgreSQL.

PostgreSQL comes from MDM_TEST_POSTGRES_URL (an admin URL; `.ci/run` starts a throwaway server and
sets it). Without it those tests are skipped with a reason, unless MDM_REQUIRE_POSTGRES=1, as in CI,
where a missing server is a failure. Each test gets a fresh database cloned from a migrated template,
so tests are isolated and fast.
"""

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mdm.actor import Role, cli_actor
from mdm.app import create_app
from mdm.auth.models import TokenCreate
from mdm.auth.service import create_token
from mdm.bootstrap import Runtime, bootstrap
from mdm.database import Database
from mdm.migrate import upgrade
from mdm.settings import Settings

BACKENDS = ("sqlite", "postgresql")


def _require_postgres() -> bool:
    return os.environ.get("MDM_REQUIRE_POSTGRES") == "1"


def _postgres_admin_url() -> str | None:
    return os.environ.get("MDM_TEST_POSTGRES_URL")


def _admin_engine(url: str):  # type: ignore[no-untyped-def]
    return create_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


@pytest.fixture(scope="session")
def worker_id_safe(request: pytest.FixtureRequest) -> str:
    worker = getattr(request.config, "workerinput", {}).get("workerid", "main")
    return worker.replace("-", "_")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_template(worker_id_safe: str) -> Iterator[str]:
    admin_url = _postgres_admin_url()
    if not admin_url:
        if _require_postgres():
            pytest.fail("MDM_REQUIRE_POSTGRES=1 but MDM_TEST_POSTGRES_URL is not set: PostgreSQL did not start")
        pytest.skip("PostgreSQL tests need MDM_TEST_POSTGRES_URL (`.ci/run` sets it); skipped here")
    admin = _admin_engine(admin_url)
    name = f"mdm_template_{worker_id_safe}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        if _require_postgres():
            pytest.fail(f"PostgreSQL at MDM_TEST_POSTGRES_URL is not usable: {exc}")
        pytest.skip(f"PostgreSQL at MDM_TEST_POSTGRES_URL is not usable: {exc}")
    upgrade(make_url(admin_url).set(database=name).render_as_string(hide_password=False))
    yield name
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "mdm.sqlite3"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    template = request.getfixturevalue("postgres_template")
    admin_url = _postgres_admin_url()
    assert admin_url
    name = f"mdm_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine(admin_url)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, scheduler="off")


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """Built afresh for each test, as each process builds its own: no test inherits another's wiring."""
    runtime = bootstrap(settings)
    yield runtime
    runtime.close()


@pytest.fixture
def database(runtime: Runtime) -> Database:
    return runtime.database


@pytest.fixture
def app(settings: Settings, database: Database):  # type: ignore[no-untyped-def]
    return create_app(settings, database)


@pytest.fixture
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def make_token(database: Database) -> Callable[[Role], str]:
    def make(role: Role, name: str | None = None) -> str:
        with database.writing() as session:
            created = create_token(session, TokenCreate(name=name or f"test {role.value}", role=role), cli_actor())
        return created.token

    return make


@pytest.fixture
def auth(make_token: Callable[[Role], str]) -> Callable[[Role], dict[str, str]]:
    """`auth(Role.admin)` gives headers with a fresh token of that role."""
    cache: dict[Role, dict[str, str]] = {}

    def headers(role: Role) -> dict[str, str]:
        if role not in cache:
            cache[role] = {"Authorization": f"Bearer {make_token(role)}"}
        return cache[role]

    return headers
