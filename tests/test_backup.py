"""`mdm backup` and `mdm restore`: a consistent archive taken while the server writes, restored into an
empty data directory, after which the audit chain verifies and enrolled devices check in as before.

SQLite goes through the whole story over real HTTP with the CLI; PostgreSQL (pg_dump and pg_restore)
gets a lighter run in process. The rest are the refusals: each leaves everything as it was.
"""

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mdm.actor import Role, cli_actor
from mdm.agent import enroll_device, run_device
from mdm.app import create_app
from mdm.audit.service import record
from mdm.auth.models import TokenCreate
from mdm.auth.service import create_token
from mdm.backup import BackupError, create_backup, restore_backup
from mdm.cli import backed_up_data
from mdm.database import open_database
from mdm.settings import Settings
from tests.live_server import live_server

CLI_TIMEOUT = 60
OLDER_REVISION = "0007"  # any revision before the newest


def _mdm(data_dir: Path, *args: str, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDM_")}
    env["MDM_DATA_DIR"] = str(data_dir)
    if database_url:
        env["MDM_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "mdm", *args], capture_output=True, text=True, env=env, timeout=CLI_TIMEOUT, check=False
    )


def _admin_token(database_url: str) -> str:
    database = open_database(database_url)
    try:
        with database.writing() as session:
            return create_token(session, TokenCreate(name="backup test", role=Role.admin), cli_actor()).token
    finally:
        database.dispose()


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


class Writer(threading.Thread):
    """Keeps adding people and devices (each with its audit event) until stopped; remembers what committed."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.base_url, self.headers = base_url, headers
        self.stop = threading.Event()
        self.committed: list[tuple[float, str]] = []  # (time it was answered, external id)
        self.errors: list[str] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                i += 1
                person = {"external_id": f"LOAD{i:05d}", "kind": "learner", "display_name": f"Load {i}"}
                answer = client.post("/api/v1/people", json=person)
                device = client.post("/api/v1/devices", json={"serial": f"LOADSN{i:05d}", "platform": "ipados"})
                if answer.status_code != 201 or device.status_code != 201:
                    self.errors.append(f"{answer.status_code} {device.status_code} {answer.text[:200]}")
                    continue
                self.committed.append((time.monotonic(), person["external_id"]))


def test_backup_under_load_then_restore_into_a_destroyed_data_dir_and_devices_check_in(tmp_path, sqlite_template):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database_url = f"sqlite:///{data_dir / 'mdm.sqlite3'}"
    shutil.copyfile(sqlite_template, data_dir / "mdm.sqlite3")
    archive = tmp_path / "backups" / "mdm-backup.tar.gz"
    archive.parent.mkdir()
    headers = {"Authorization": f"Bearer {_admin_token(database_url)}"}
    device_dir = tmp_path / "ipad"

    with live_server(data_dir, database_url) as server:
        api = httpx.Client(base_url=server.url, headers=headers, timeout=30)
        ca_before = api.get("/api/v1/pki/ca.pem").text
        token = api.post("/api/v1/enrollment-tokens", json={"category": "school_single_user"}).json()["token"]
        device_id = enroll_device(device_dir, server.url, token, {"serial": "BACKUP1", "platform": "ipados"})
        run_device(device_dir)

        writer = Writer(server.url, headers)
        writer.start()
        while len(writer.committed) < 5:  # the load is really running before the backup starts
            time.sleep(0.05)
        started = time.monotonic()
        result = _mdm(data_dir, "backup", str(archive))
        finished = time.monotonic()
        deadline = finished + 10
        while not writer.committed or writer.committed[-1][0] < finished:  # one write after it, to be sure
            assert time.monotonic() < deadline, "the writer stalled"
            time.sleep(0.05)
        writer.stop.set()
        writer.join(timeout=30)
        api.close()
    assert result.returncode == 0, result.stderr
    assert writer.errors == []
    assert any(started < at < finished for at, _ in writer.committed), "no write landed while the backup ran"
    assert _mode(archive) == 0o600
    assert not [p for p in archive.parent.iterdir() if p != archive], "a temporary file was left behind"

    shutil.rmtree(data_dir)  # the disk is gone
    restored = _mdm(data_dir, "restore", str(archive))
    assert restored.returncode == 0, restored.stderr
    assert "audit chain is intact" in restored.stdout
    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / "ca") == 0o700
    for name in ("mdm.sqlite3", "secrets.key", "ca/ca.key.pem", "ca/ca.pem"):
        assert _mode(data_dir / name) == 0o600, name

    with (
        live_server(data_dir, database_url) as server,
        httpx.Client(base_url=server.url, headers=headers, timeout=30) as api,
    ):
        assert api.get("/api/v1/pki/ca.pem").text == ca_before
        # Everything committed before the backup began is there; nothing after it finished can be.
        before = [external_id for at, external_id in writer.committed if at < started]
        after = [external_id for at, external_id in writer.committed if at > finished]
        for external_id in (before[0], before[-1]):
            assert api.get("/api/v1/people", params={"external_id": external_id}).json()["items"], external_id
        assert not api.get("/api/v1/people", params={"external_id": after[-1]}).json()["items"]
        # The device's identity still holds: it checks in, and obeys a command queued after the restore.
        lock = api.post(f"/api/v1/devices/{device_id}/commands", json={"type": "DeviceLock"}).json()
        rounds = run_device(device_dir, server.url)
        assert [(a.id, a.outcome.status) for r in rounds for a in r.applied] == [(lock["id"], "acknowledged")]
        assert api.get("/api/v1/audit/verify").json()["ok"] is True


# --- In process: what the archive holds, and the refusals ---------------------------------------------


def _installation(tmp_path: Path, name: str, template: Path) -> Settings:
    """A data directory as `mdm serve` leaves it (database, CA, signer, secrets key), with some history."""
    data_dir = tmp_path / name
    data_dir.mkdir()
    shutil.copyfile(template, data_dir / "mdm.sqlite3")
    settings = Settings(data_dir=data_dir, scheduler="off")
    app = create_app(settings)
    headers = {"Authorization": f"Bearer {_admin_token(settings.resolved_database_url)}"}
    with TestClient(app) as client:
        person = {"external_id": f"{name}-1", "kind": "learner", "display_name": name}
        assert client.post("/api/v1/people", json=person, headers=headers).status_code == 201
    return settings


@pytest.fixture
def home(tmp_path, sqlite_template) -> Settings:
    return _installation(tmp_path, "home", sqlite_template)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_the_archive_holds_the_database_ca_and_keys_each_0600_with_a_manifest(home, tmp_path):
    archive = tmp_path / "out.tar.gz"
    create_backup(home, archive, backed_up_data())
    with tarfile.open(archive, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        contents = {name: tar.extractfile(m).read() for name, m in members.items() if m.isfile()}  # type: ignore[union-attr]
    assert {
        "manifest.json",
        "database/mdm.sqlite3",
        "data/secrets.key",
        "data/ca/ca.key.pem",
        "data/ca/ca.pem",
    } <= set(members)
    assert all(m.mode == 0o600 for m in members.values() if m.isfile())
    assert manifest["database"] == "sqlite"
    assert manifest["schema_revision"]
    assert manifest["tool_version"]
    assert manifest["created_at"]
    assert contents["data/ca/ca.key.pem"] == (home.data_dir / "ca" / "ca.key.pem").read_bytes()
    assert contents["data/secrets.key"] == (home.data_dir / "secrets.key").read_bytes()
    for name, entry in manifest["files"].items():
        assert hashlib.sha256(contents[name]).hexdigest() == entry["sha256"], name
    # The database copy is a complete, self-contained SQLite file (no -wal needed to read it).
    copy = tmp_path / "copy.sqlite3"
    copy.write_bytes(contents["database/mdm.sqlite3"])
    engine = create_engine(f"sqlite:///{copy}")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM person")).scalar() == 1
    engine.dispose()


def test_backup_never_overwrites_a_file_without_force(home, tmp_path):
    archive = tmp_path / "out.tar.gz"
    archive.write_bytes(b"last week's backup")
    with pytest.raises(BackupError, match="--force"):
        create_backup(home, archive, backed_up_data())
    assert archive.read_bytes() == b"last week's backup"
    create_backup(home, archive, backed_up_data(), force=True)
    assert tarfile.is_tarfile(archive)


def test_backup_of_a_data_dir_without_its_ca_is_refused(home, tmp_path):
    wrong = home.model_copy(update={"data_dir": tmp_path / "elsewhere"})
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(BackupError, match="MDM_DATA_DIR"):
        create_backup(wrong, tmp_path / "out.tar.gz", backed_up_data())
    assert not (tmp_path / "out.tar.gz").exists()


def test_restore_refuses_a_data_dir_or_database_in_use_without_force(home, tmp_path, sqlite_template):
    archive = tmp_path / "out.tar.gz"
    create_backup(home, archive, backed_up_data())
    other = _installation(tmp_path, "other", sqlite_template)
    before = _snapshot(other.data_dir)
    with pytest.raises(BackupError, match="--force"):
        restore_backup(other, archive)
    assert _snapshot(other.data_dir) == before
    # A database elsewhere that already holds data is refused too, even with an empty data directory.
    empty_dir = Settings(data_dir=tmp_path / "empty", database_url=other.resolved_database_url, scheduler="off")
    with pytest.raises(BackupError, match="not empty"):
        restore_backup(empty_dir, archive)
    assert _snapshot(other.data_dir) == before


def test_restore_with_force_replaces_another_installation_entirely(home, tmp_path, sqlite_template):
    archive = tmp_path / "out.tar.gz"
    create_backup(home, archive, backed_up_data())
    other = _installation(tmp_path, "other", sqlite_template)
    (other.data_dir / "ca" / "stray.pem").write_text("left from the old CA")
    report = restore_backup(other, archive, force=True)
    assert report.chain.ok
    for name in ("ca/ca.key.pem", "ca/ca.pem", "ca/profile-signing.key.pem", "secrets.key"):
        assert (other.data_dir / name).read_bytes() == (home.data_dir / name).read_bytes(), name
    assert not (other.data_dir / "ca" / "stray.pem").exists()
    engine = create_engine(other.resolved_database_url)
    with engine.connect() as connection:
        names = connection.execute(text("SELECT external_id FROM person")).scalars().all()
    engine.dispose()
    assert names == ["home-1"]


def _rewrite(archive: Path, change: Callable[[str, bytes], bytes]) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(archive, "w:gz") as tar:
        for member, data in members:
            data = change(member.name, data)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda name, data: data + b"x" if name == "data/secrets.key" else data, "checksum"),
        (
            lambda name, data: (
                json.dumps({**json.loads(data), "schema_revision": "9999_future"}).encode()
                if name == "manifest.json"
                else data
            ),
            "9999_future",
        ),
        (
            lambda name, data: (
                json.dumps({**json.loads(data), "format_version": 99}).encode() if name == "manifest.json" else data
            ),
            "format",
        ),
        (lambda name, data: b"not json" if name == "manifest.json" else data, "manifest"),
        (
            lambda name, data: (
                json.dumps(
                    {**json.loads(data), "files": {**json.loads(data)["files"], "data/../../evil": {"sha256": "0"}}}
                ).encode()
                if name == "manifest.json"
                else data
            ),
            "never holds",
        ),
    ],
    ids=["tampered-file", "newer-schema", "newer-format", "bad-manifest", "path-escape"],
)
def test_restore_refuses_a_damaged_or_foreign_archive_and_writes_nothing(home, tmp_path, change, words):
    archive = tmp_path / "out.tar.gz"
    create_backup(home, archive, backed_up_data())
    _rewrite(archive, change)
    target = Settings(data_dir=tmp_path / "fresh", scheduler="off")
    with pytest.raises(BackupError, match=words):
        restore_backup(target, archive)
    assert not target.data_dir.exists() or not any(target.data_dir.iterdir())


def test_restore_refuses_what_is_not_an_archive_or_was_cut_short(home, tmp_path):
    target = Settings(data_dir=tmp_path / "fresh", scheduler="off")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b but not really")
    with pytest.raises(BackupError, match="not a backup archive"):
        restore_backup(target, junk)
    archive = tmp_path / "out.tar.gz"
    create_backup(home, archive, backed_up_data())
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])  # a copy that ran out of disk
    with pytest.raises(BackupError, match="damaged"):
        restore_backup(target, archive)
    assert not target.data_dir.exists() or not any(target.data_dir.iterdir())


def test_the_cli_teaches_and_refuses_plainly(home, tmp_path):
    help_text = " ".join(_mdm(home.data_dir, "backup", "--help").stdout.split())
    for words in ("online backup", "pg_dump", "0600", "--force", "mdm restore"):
        assert words in help_text, words
    help_text = " ".join(_mdm(home.data_dir, "restore", "--help").stdout.split())
    for words in ("--force", "audit", "MDM_CA_PASSPHRASE", "pg_restore"):
        assert words in help_text, words
    taken = tmp_path / "taken.tar.gz"
    taken.write_bytes(b"keep me")
    refused = _mdm(home.data_dir, "backup", str(taken))
    assert refused.returncode == 2
    assert "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert taken.read_bytes() == b"keep me"


# --- PostgreSQL ------------------------------------------------------------------------------------


def _empty_postgres_database(admin_url: str, name: str) -> str:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _drop_postgres_database(admin_url: str, name: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="pg_dump is not on PATH")
def test_postgresql_backup_and_restore_with_pg_dump_and_devices_check_in(settings, client, auth, tmp_path):
    device_dir = tmp_path / "ipad"
    token = client.post(
        "/api/v1/enrollment-tokens", json={"category": "school_single_user"}, headers=auth(Role.admin)
    ).json()["token"]
    device_id = enroll_device(
        device_dir, "http://testserver", token, {"serial": "PGB1", "platform": "ipados"}, http=client
    )
    run_device(device_dir, http=client)
    archive = tmp_path / "pg.tar.gz"
    stop, written = threading.Event(), []

    def write_audit_events() -> None:  # the chain's head and its events must come from one snapshot
        database = open_database(settings.resolved_database_url)
        while not stop.is_set():
            with database.writing() as session:
                record(session, cli_actor(), "test.load", "test", None, {"n": len(written)})
            written.append(time.monotonic())
        database.dispose()

    writer = threading.Thread(target=write_audit_events, daemon=True)
    writer.start()
    while not written:
        time.sleep(0.01)
    started = time.monotonic()
    manifest = create_backup(settings, archive, backed_up_data()).manifest
    finished = time.monotonic()
    stop.set()
    writer.join(timeout=30)
    assert any(started < at < finished for at in written), "no audit event was written while pg_dump ran"
    assert manifest["database"] == "postgresql"
    with tarfile.open(archive, "r:gz") as tar:
        assert "database/mdm.pgdump" in tar.getnames()

    admin_url = os.environ["MDM_TEST_POSTGRES_URL"]
    name = f"mdm_restore_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    target_url = _empty_postgres_database(admin_url, name)
    try:
        target = Settings(data_dir=tmp_path / "restored", database_url=target_url, scheduler="off")
        report = restore_backup(target, archive)
        assert report.chain.ok
        assert report.chain.events_checked > 0
        with pytest.raises(BackupError, match="--force"):  # now it holds data
            restore_backup(target, archive)
        database = open_database(target_url)
        try:
            with TestClient(create_app(target, database)) as restored:
                lock = restored.post(
                    f"/api/v1/devices/{device_id}/commands", json={"type": "DeviceLock"}, headers=auth(Role.admin)
                )
                assert lock.status_code == 201, lock.text
                rounds = run_device(device_dir, "http://testserver", http=restored)
                assert [a.outcome.status for r in rounds for a in r.applied] == ["acknowledged"]
        finally:
            database.dispose()
    finally:
        _drop_postgres_database(admin_url, name)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_without_pg_dump_says_exactly_what_to_run(settings, client, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    with pytest.raises(BackupError) as refused:
        create_backup(settings, tmp_path / "pg.tar.gz", backed_up_data())
    message = str(refused.value)
    assert "pg_dump --format=custom" in message
    assert str(settings.data_dir / "ca") in message
    password = make_url(settings.database_url).password
    assert not password or password not in message  # never print the password
    assert not (tmp_path / "pg.tar.gz").exists()


def test_an_archive_from_an_older_schema_is_restored_then_migrated(tmp_path):
    from enrollment.ca import load_or_create_ca
    from mdm.migrate import current_revision, head_revision, upgrade
    from mdm.sealing import Sealer

    old = Settings(data_dir=tmp_path / "old", scheduler="off")
    old.data_dir.mkdir()
    upgrade(old.resolved_database_url, OLDER_REVISION)  # as a previous version of the service left it
    load_or_create_ca(old.data_dir, None)
    Sealer.load_or_create(old.data_dir)
    archive = tmp_path / "old.tar.gz"
    assert create_backup(old, archive, backed_up_data()).manifest["schema_revision"] == OLDER_REVISION

    target = Settings(data_dir=tmp_path / "new", scheduler="off")
    report = restore_backup(target, archive)
    assert report.upgraded_from == OLDER_REVISION
    assert report.chain.ok
    engine = create_engine(target.resolved_database_url)
    assert current_revision(engine) == head_revision()
    engine.dispose()
