"""Real `mdm` processes killed with SIGKILL in the middle of their work, then run again.

A bulk import, a compliance run and a profile re-push are each cut off mid-transaction or mid-run, as a
power cut or an OOM kill would. Afterwards each either finishes when run again or was never there (an
import is all-or-nothing), nothing is done twice, and `mdm audit verify` still passes. They run on
SQLite, the default deployment, whose crash recovery (the WAL) is the one that has to hold; the
exit-batch crash (tests/test_exit_crash.py) runs on both databases.
"""

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from mdm.actor import Role
from tests.live_server import live_server

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

WAIT = 60  # seconds: the longest any wait below may take before the test fails rather than hangs


def _env(settings) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        **os.environ,
        "MDM_DATA_DIR": str(settings.data_dir),
        "MDM_DATABASE_URL": settings.resolved_database_url,
        "MDM_SCHEDULER": "off",
    }


def _mdm(settings, *args: str) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    return subprocess.Popen(
        [sys.executable, "-m", "mdm", *args],
        env=_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> str:
    out, errors = process.communicate(timeout=WAIT * 2)
    assert process.returncode == 0, errors[-2000:]
    return out


def _audit_verifies(settings) -> None:  # type: ignore[no-untyped-def]
    out = _finish(_mdm(settings, "audit", "verify"))
    assert "The audit chain is intact" in out


def _write_locked(path: Path) -> bool:
    """True while another process holds SQLite's write lock, i.e. has a write transaction open."""
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        return True
    finally:
        probe.close()


def _kill_when(process: subprocess.Popen[str], ready: Callable[[], bool], what: str) -> None:
    """SIGKILL the process as soon as `ready()` holds; fail if it finished first (the kill came too late)."""
    deadline = time.monotonic() + WAIT
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the process finished before {what}: {process.communicate()[1][-1000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no sign of {what} within {WAIT} s")
        time.sleep(0.01)
    process.kill()
    process.wait(timeout=10)
    assert process.returncode == -9, "the process had already exited when the kill came"


def _while_writing(path: Path) -> Callable[[], bool]:
    """Ready once the write lock has been held for a while: the transaction is well under way."""
    held_since: list[float] = []

    def ready() -> bool:
        if not _write_locked(path):
            held_since.clear()
            return False
        held_since[:1] = held_since[:1] or [time.monotonic()]
        return time.monotonic() - held_since[0] > 0.1

    return ready


def _scalar(database, sql: str, **params) -> int:  # type: ignore[no-untyped-def]
    with database.read_engine.connect() as connection:
        return connection.execute(text(sql), params).scalar_one()


# --- Bulk imports ----------------------------------------------------------------------------------

PEOPLE = 10_000


def test_sigkill_mid_import_leaves_nothing_and_the_rerun_imports_each_row_once(settings, database, tmp_path):
    db_path = Path(database.write_engine.url.database)
    people_csv = tmp_path / "people.csv"
    people_csv.write_text(
        "external_id,kind,display_name,groups\n"
        + "".join(f"P{i:05d},learner,Learner {i},Year {7 + i % 5};Form {i % 30}\n" for i in range(PEOPLE))
    )
    devices_csv = tmp_path / "devices.csv"
    devices_csv.write_text(
        "serial,platform,model,category,asset_tag,person_external_id\n"
        + "".join(f"SN{i:06d},ipados,iPad,school_single_user,A{i},P{i:05d}\n" for i in range(PEOPLE))
    )
    imports = (
        ("people", people_csv, "SELECT count(*) FROM person"),
        ("devices", devices_csv, "SELECT count(*) FROM device"),
    )
    for command, csv, rows in imports:
        importing = _mdm(settings, command, "import", str(csv))
        _kill_when(importing, _while_writing(db_path), f"the {command} import writing")
        assert _scalar(database, rows) == 0, "a killed import left rows behind"
        assert _scalar(database, "SELECT count(*) FROM audit_event WHERE action LIKE '%.import'") == (
            0 if command == "people" else 1
        )
        _finish(_mdm(settings, command, "import", str(csv)))
    assert _scalar(database, "SELECT count(DISTINCT external_id) FROM person") == PEOPLE
    assert _scalar(database, "SELECT count(*) FROM person") == PEOPLE
    assert _scalar(database, "SELECT count(DISTINCT serial) FROM device") == PEOPLE
    assert _scalar(database, "SELECT count(*) FROM device WHERE person_id IS NOT NULL") == PEOPLE
    assert _scalar(database, "SELECT count(*) FROM audit_event WHERE action LIKE '%.import'") == 2
    _audit_verifies(settings)


# --- A compliance run ------------------------------------------------------------------------------

FLEET = 4000  # four batches of 1,000: the kill lands after the first has committed


def test_sigkill_mid_compliance_run_then_a_rerun_evaluates_every_device_and_remediates_once(settings, database):
    from bench.compliance import _fleet

    _fleet(database, FLEET, apps=10)  # one device in fifty has lost a required app
    running = _mdm(settings, "compliance", "run")
    evaluated = "SELECT count(*) FROM device WHERE compliance_evaluated_at IS NOT NULL"
    _kill_when(running, lambda: _scalar(database, evaluated) > 0, "the first batch committing")
    assert _scalar(database, evaluated) < FLEET, "the kill came after the last batch"
    assert _scalar(database, "SELECT count(*) FROM compliance_run WHERE status = 'running'") == 1

    out = _finish(_mdm(settings, "compliance", "run"))
    assert '"status": "completed"' in out
    assert f'"devices_evaluated": {FLEET}' in out
    assert _scalar(database, evaluated) == FLEET
    missing = FLEET // 50
    assert _scalar(database, "SELECT count(*) FROM device WHERE compliance_status = 'non_compliant'") == missing
    # Devices the killed run had judged already are judged again, but their verdict, its history and
    # the remediation it queued are there once.
    assert _scalar(database, "SELECT count(*) FROM compliance_history") == missing
    assert _scalar(database, "SELECT count(DISTINCT device_id) FROM compliance_history") == missing
    reinstalls = "SELECT count(*) FROM command WHERE type = 'InstallApplication' AND status = 'queued'"
    assert _scalar(database, reinstalls) == missing
    assert _scalar(database, reinstalls.replace("count(*)", "count(DISTINCT device_id)")) == missing
    _audit_verifies(settings)


# --- A profile re-push -----------------------------------------------------------------------------

DEVICES = 4000
PROXY = "uk.sch.example.proxy"


def test_sigkill_mid_profile_repush_then_the_edit_again_queues_one_install_per_device(settings, database, make_token):
    from bench.reconcile import _fleet, _installed

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db_path = Path(database.write_engine.url.database)
    headers = {"Authorization": f"Bearer {make_token(Role.admin)}"}
    fleet = _fleet(database, DEVICES)
    _installed(database, fleet, PROXY, 1)  # every device carries version 1 already
    edit = {"payloads": [{"type": "proxy", "host": "proxy.example.sch.uk", "port": 3128}]}
    with live_server(settings.data_dir, settings.resolved_database_url) as server:
        created = httpx.post(
            f"{server.url}/api/v1/profiles",
            headers=headers,
            json={
                "name": "Web filter",
                "identifier": PROXY,
                "payloads": [{"type": "proxy", "pac_url": "https://filter.example.sch.uk/proxy.pac"}],
                "scope": {"categories": ["authorised"]},
            },
            timeout=WAIT,
        )
        assert created.status_code == 201, created.text
        profile = created.json()
        assert _scalar(database, "SELECT count(*) FROM command") == 0  # nothing to do at version 1
        answers: list[object] = []

        def put() -> None:
            try:
                answers.append(
                    httpx.put(f"{server.url}/api/v1/profiles/{profile['id']}", headers=headers, json=edit, timeout=WAIT)
                )
            except httpx.HTTPError as exc:
                answers.append(exc)

        editing = threading.Thread(target=put)
        editing.start()
        _kill_when(server.process, _while_writing(db_path), "the re-push writing")  # type: ignore[arg-type]
        editing.join(timeout=WAIT)
        assert isinstance(answers[0], httpx.HTTPError), "the edit answered before the kill"
    # Cleanly absent: the edit, its version and its commands went together.
    assert _scalar(database, "SELECT version FROM profile") == 1
    assert _scalar(database, "SELECT count(*) FROM command") == 0
    assert _scalar(database, "SELECT count(*) FROM audit_event WHERE action = 'profile.update'") == 0
    with live_server(settings.data_dir, settings.resolved_database_url) as server:
        again = httpx.put(f"{server.url}/api/v1/profiles/{profile['id']}", headers=headers, json=edit, timeout=WAIT)
        assert again.status_code == 200, again.text
        assert again.json()["version"] == 2
        one = httpx.get(f"{server.url}/api/v1/devices/{fleet[0]}/commands", headers=headers, timeout=WAIT).json()
    assert [(c["type"], c["status"], c["payload"]["version"]) for c in one["items"]] == [
        ("InstallProfile", "queued", 2)
    ]
    installs = "SELECT count(*) FROM command WHERE type = 'InstallProfile' AND status = 'queued'"
    assert _scalar(database, installs) == DEVICES
    assert _scalar(database, installs.replace("count(*)", "count(DISTINCT device_id)")) == DEVICES
    _audit_verifies(settings)
