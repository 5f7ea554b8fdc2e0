"""The audit log: every write is recorded with who/what/when, and tampering is caught."""

import subprocess
import sys

import pytest
from sqlalchemy import text

from mdm.actor import Role
from mdm.audit.service import verify_chain


def _make_history(client, auth, n: int = 5) -> None:
    for i in range(n):
        body = {"external_id": f"UPN{i}", "kind": "learner", "display_name": f"Learner {i}", "groups": ["Year 7"]}
        assert client.post("/api/v1/people", json=body, headers=auth(Role.technician)).status_code == 201


def _verify(database):
    with database.reading() as session:
        return verify_chain(session)


def test_each_write_records_who_what_which_and_when(client, auth):
    _make_history(client, auth, 1)
    events = client.get("/api/v1/audit?action=person.create", headers=auth(Role.auditor)).json()["items"]
    assert len(events) == 1
    event = events[0]
    person = client.get("/api/v1/people?external_id=UPN0", headers=auth(Role.admin)).json()["items"][0]
    assert event["actor"] == "token:test technician"
    assert event["actor_role"] == "technician"
    assert event["object_type"] == "person"
    assert event["object_id"] == person["id"]
    assert event["summary"]["display_name"] == "Learner 0"
    assert event["occurred_at"].endswith("Z") or "+00:00" in event["occurred_at"]
    assert event["request_id"]


def test_a_refused_write_leaves_no_audit_event(client, auth):
    _make_history(client, auth, 1)
    duplicate = {"external_id": "UPN0", "kind": "learner", "display_name": "Again"}
    assert client.post("/api/v1/people", json=duplicate, headers=auth(Role.admin)).status_code == 409
    events = client.get("/api/v1/audit?action=person.create", headers=auth(Role.admin)).json()["items"]
    assert len(events) == 1


def test_filters_and_pages_newest_first(client, auth):
    _make_history(client, auth, 5)
    first = client.get("/api/v1/audit?object_type=person&limit=2", headers=auth(Role.admin)).json()
    assert [e["summary"]["external_id"] for e in first["items"]] == ["UPN4", "UPN3"]
    second = client.get(
        f"/api/v1/audit?object_type=person&limit=2&cursor={first['next_cursor']}", headers=auth(Role.admin)
    )
    assert [e["summary"]["external_id"] for e in second.json()["items"]] == ["UPN2", "UPN1"]
    by_actor = client.get("/api/v1/audit?actor=token:test technician", headers=auth(Role.admin)).json()["items"]
    assert len(by_actor) == 5


def test_intact_chain_verifies(client, auth, database):
    _make_history(client, auth)
    report = _verify(database)
    assert report.ok
    assert report.events_checked >= 6
    assert client.get("/api/v1/audit/verify", headers=auth(Role.auditor)).json()["ok"] is True


@pytest.mark.parametrize(
    ("tamper", "words"),
    [
        ("UPDATE audit_event SET actor = 'token:someone else' WHERE seq = 3", "edited"),
        ("DELETE FROM audit_event WHERE seq = 3", "missing"),
        ("DELETE FROM audit_event WHERE seq = (SELECT MAX(seq) FROM audit_event)", "latest events were deleted"),
    ],
)
def test_tampering_with_raw_sql_is_caught(client, auth, database, tamper, words):
    _make_history(client, auth)
    with database.write_engine.begin() as connection:
        connection.execute(text(tamper))
    report = _verify(database)
    assert not report.ok
    assert words in report.problem
    expected_seq = None if "MAX" in tamper else 3
    if expected_seq:
        assert report.first_broken_seq == expected_seq


def test_rewriting_an_event_and_its_hash_breaks_the_next_link(client, auth, database):
    _make_history(client, auth)
    with database.write_engine.begin() as connection:
        connection.execute(text("UPDATE audit_event SET hash = :h WHERE seq = 2"), {"h": "f" * 64})
    report = _verify(database)
    assert not report.ok
    assert report.first_broken_seq == 2


def test_cli_verify_names_the_first_broken_link(client, auth, database, settings):
    _make_history(client, auth)
    env = {"MDM_DATA_DIR": str(settings.data_dir), "MDM_DATABASE_URL": settings.resolved_database_url}
    command = [sys.executable, "-m", "mdm", "audit", "verify"]
    good = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert good.returncode == 0
    assert "intact" in good.stdout
    with database.write_engine.begin() as connection:
        connection.execute(text("UPDATE audit_event SET summary = '{}' WHERE seq = 4"))
    bad = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert bad.returncode == 1
    assert "BROKEN at event 4" in bad.stdout


def test_concurrent_writers_keep_one_unbroken_chain(database):
    """Appends from many threads serialise on the chain head: no fork, no gap."""
    from concurrent.futures import ThreadPoolExecutor

    from mdm.actor import cli_actor
    from mdm.people.models import PersonCreate
    from mdm.people.service import create_person

    def add(i: int) -> None:
        with database.writing() as session:
            create_person(session, PersonCreate(external_id=f"T{i}", kind="staff", display_name=f"T {i}"), cli_actor())

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(add, range(40)))
    report = _verify(database)
    assert report.ok
    assert report.events_checked == 40
