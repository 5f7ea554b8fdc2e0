"""Leavers: per-device checklists that the devices' own answers fill in, with evidence."""

from datetime import date, timedelta

from sqlalchemy import text

from mdm.actor import Role
from tests.fleet import PROXY, WIFI_FULL, Tablet, create_app, create_profile
from tests.pki import openssl_crl_verdict

CSV = {"content-type": "text/csv"}


def learner(client, auth, external_id: str = "A1") -> str:
    body = {
        "external_id": external_id,
        "kind": "learner",
        "display_name": f"Learner {external_id}",
        "groups": ["Year 11"],
    }
    return client.post("/api/v1/people", json=body, headers=auth(Role.admin)).json()["id"]


def open_exit(client, auth, person_id: str, **fields) -> dict:
    response = client.post(
        "/api/v1/exits",
        json={"person_id": person_id, "reason": "left school", **fields},
        headers=auth(Role.integration),
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


def get_exit(client, auth, case_id: str) -> dict:
    return client.get(f"/api/v1/exits/{case_id}", headers=auth(Role.admin)).json()


def steps_of(case: dict, device_id: str) -> dict[str, str]:
    device = next(d for d in case["devices"] if d["device_id"] == device_id)
    return {s["kind"]: s["status"] for s in device["steps"]}


def school_setup(client, auth) -> dict:
    apps = {
        name: create_app(client, auth, f"com.school.{name}", licence="school", licences_total=5)
        for name in ("maths", "science", "reader")
    }
    create_profile(client, auth, "uk.sch.example.proxy", [PROXY])
    create_profile(client, auth, "uk.sch.example.wifi", [WIFI_FULL])
    return apps


def test_authorised_ipad_leaves_with_only_the_family_apps(client, auth, tmp_path):
    apps = school_setup(client, auth)
    person = learner(client, auth)
    ipad = Tablet(client, auth, tmp_path, "IPAD1", category="authorised", person_id=person)
    ipad.inventory.install_own_app("com.family.game", "1.0")
    ipad.inventory.install_own_app("com.family.music", "2.0")
    ipad.agent.state.save()
    ipad.converge()
    assert set(ipad.apps()) == {
        "com.school.maths",
        "com.school.science",
        "com.school.reader",
        "com.family.game",
        "com.family.music",
    }
    assert set(ipad.profiles()) == {"uk.sch.example.proxy", "uk.sch.example.wifi"}
    assert client.get(f"/api/v1/apps/{apps['maths']['id']}", headers=auth(Role.admin)).json()["licences_assigned"] == 1

    case = open_exit(client, auth, person)
    assert case["status"] == "in_progress"
    assert steps_of(case, ipad.id)["remove_school_apps"] == "waiting_for_device"
    ipad.agent.run_once()  # the removals
    ipad.agent.run_once()  # RemoveMDM, queued once the removals were answered
    assert ipad.apps() == {"com.family.game": False, "com.family.music": False}
    assert ipad.profiles() == {}
    case = get_exit(client, auth, case["id"])
    assert case["status"] == "completed", case
    assert set(steps_of(case, ipad.id).values()) == {"done"}
    device = case["devices"][0]
    assert device["apps_removed"] == ["com.school.maths", "com.school.reader", "com.school.science"]
    assert device["apps_kept"] == ["com.family.game", "com.family.music"]
    assert sorted(device["licences_returned"]) == ["com.school.maths", "com.school.reader", "com.school.science"]
    assert client.get(f"/api/v1/apps/{apps['maths']['id']}", headers=auth(Role.admin)).json()["licences_assigned"] == 0
    assert client.get(f"/api/v1/devices/{ipad.id}", headers=auth(Role.admin)).json()["state"] == "retired"
    history = client.get(f"/api/v1/devices/{ipad.id}/commands?limit=1000", headers=auth(Role.admin)).json()["items"]
    targets = [c["payload"].get("identifier") for c in history if c["type"] == "RemoveApplication"]
    assert "com.family.game" not in targets
    assert len(targets) == len(set(targets))  # no command twice


def test_revoked_certificate_is_in_the_crl_and_the_device_shut_out(client, auth, tmp_path):
    person = learner(client, auth)
    ipad = Tablet(client, auth, tmp_path, "IPAD1", category="learner_owned", person_id=person)
    ipad.converge()
    certificate = (ipad.state_dir / "device.cert.pem").read_text()
    case = open_exit(client, auth, person)
    ipad.agent.run_once()
    assert get_exit(client, auth, case["id"])["status"] == "completed"
    verdict = openssl_crl_verdict(
        tmp_path, certificate, client.get("/api/v1/pki/ca.pem").text, client.get("/api/v1/pki/crl").content
    )
    assert "certificate revoked" in verdict

    key = ipad.agent.state.ensure_key() if ipad.agent.state.enrolled else None
    assert key is None  # the agent forgot its identity when MDM was removed
    report = client.get(f"/api/v1/exits/{case['id']}/report", headers=auth(Role.auditor)).json()
    device = report["devices"][0]
    assert device["certificates_revoked"]
    assert device["crl_number"] >= 1
    assert report["audit_chain"]["intact"] is True
    assert any(e["action"] == "exit.complete" for e in report["audit_events"])


def test_school_device_is_collected_wiped_and_back_in_stock(client, auth, tmp_path):
    apps = school_setup(client, auth)
    person = learner(client, auth)
    ipad = Tablet(client, auth, tmp_path, "CART1", category="school_single_user", person_id=person)
    client.put(
        f"/api/v1/apps/{apps['maths']['id']}", json={"required_for": ["school_single_user"]}, headers=auth(Role.admin)
    )
    ipad.converge()
    case = open_exit(client, auth, person)
    assert steps_of(case, ipad.id)["collect_device"] == "pending"
    assert steps_of(case, ipad.id)["wipe"] == "pending"
    collect = next(s for s in case["devices"][0]["steps"] if s["kind"] == "collect_device")
    done = client.post(
        f"/api/v1/exits/{case['id']}/steps/{collect['id']}/complete",
        json={"note": "handed in at IT"},
        headers=auth(Role.technician),
    ).json()
    assert steps_of(done, ipad.id)["wipe"] == "waiting_for_device"
    result = ipad.agent.run_once()
    assert result.unenrolled
    case = get_exit(client, auth, case["id"])
    assert case["status"] == "completed", case
    device = client.get(f"/api/v1/devices/{ipad.id}", headers=auth(Role.admin)).json()
    assert (device["state"], device["person_id"]) == ("in_stock", None)
    assert client.get(f"/api/v1/apps/{apps['maths']['id']}", headers=auth(Role.admin)).json()["licences_assigned"] == 0
    # Re-enrolment after the wipe gets a new identity.
    again = Tablet(client, auth, tmp_path, "CART1", category="school_single_user")
    assert again.id == ipad.id


def test_held_school_device_is_not_wiped(client, auth, tmp_path):
    person = learner(client, auth)
    ipad = Tablet(client, auth, tmp_path, "CART2", category="school_shared", person_id=person)
    client.put(
        f"/api/v1/devices/{ipad.id}/hold",
        json={"held": True, "reason": "confiscated: incident 7"},
        headers=auth(Role.admin),
    )
    case = open_exit(client, auth, person)
    collect = next(s for s in case["devices"][0]["steps"] if s["kind"] == "collect_device")
    case = client.post(
        f"/api/v1/exits/{case['id']}/steps/{collect['id']}/complete",
        json={"note": "in the safe"},
        headers=auth(Role.admin),
    ).json()
    wipe = next(s for s in case["devices"][0]["steps"] if s["kind"] == "wipe")
    assert wipe["status"] == "pending"
    assert "held" in wipe["detail"]
    assert ipad.agent.checkin() == []
    commands = client.get(f"/api/v1/devices/{ipad.id}/commands", headers=auth(Role.admin)).json()["items"]
    assert "EraseDevice" not in {c["type"] for c in commands}


def test_offline_device_is_forced_with_a_note_once_overdue(client, auth, tmp_path, database):
    person = learner(client, auth)
    phone = Tablet(client, auth, tmp_path, "PHONE1", category="learner_owned", person_id=person)
    case = open_exit(client, auth, person, leaving_date=(date.today() - timedelta(days=1)).isoformat())
    revoke = next(s for s in case["devices"][0]["steps"] if s["kind"] == "revoke_certificate")
    early = client.post(
        f"/api/v1/exits/{case['id']}/steps/{revoke['id']}/complete", json={"note": "gone"}, headers=auth(Role.admin)
    )
    assert early.status_code == 409
    assert "overdue" in early.json()["detail"]
    with database.write_engine.begin() as connection:
        connection.execute(text("UPDATE exit_case SET leaving_date = :d"), {"d": date.today() - timedelta(days=15)})
    assert get_exit(client, auth, case["id"])["overdue"] is True
    forced = client.post(
        f"/api/v1/exits/{case['id']}/steps/{revoke['id']}/complete",
        json={"note": "family moved abroad; device never came back online"},
        headers=auth(Role.admin),
    )
    assert forced.status_code == 200, forced.text
    case = forced.json()
    assert case["status"] == "completed_with_exceptions"
    steps = steps_of(case, phone.id)
    assert steps["remove_mdm"] == steps["revoke_certificate"] == "done_manually"
    assert steps["remove_school_apps"] == "done"  # it had none: that step was genuinely done
    assert client.get(f"/api/v1/devices/{phone.id}", headers=auth(Role.admin)).json()["state"] == "retired"
    import pytest

    from mdm.agent import AgentError

    with pytest.raises(AgentError) as refused:
        phone.agent.checkin()  # the device comes back online: shut out
    assert refused.value.status == 403
    report = client.get(f"/api/v1/exits/{case['id']}/report?format=html", headers=auth(Role.auditor))
    assert report.headers["content-type"].startswith("text/html")
    assert "family moved abroad" in report.text
    assert "done_manually" in report.text


def test_a_failed_removal_is_shown_and_resolved_when_management_ends(client, auth, tmp_path):
    create_app(client, auth, "com.school.maths")
    person = learner(client, auth)
    ipad = Tablet(client, auth, tmp_path, "IPAD1", category="authorised", person_id=person)
    ipad.converge()
    case = open_exit(client, auth, person)
    removal = next(c for c in ipad.agent.checkin() if c["type"] == "RemoveApplication")
    ipad.agent.report(removal["id"], "error", "app in use")
    case = get_exit(client, auth, case["id"])
    step = next(s for s in case["devices"][0]["steps"] if s["kind"] == "remove_school_apps")
    assert step["status"] == "failed"
    assert "app in use" in step["detail"]
    assert steps_of(case, ipad.id)["remove_mdm"] == "waiting_for_device"  # failed removals do not hold it back
    ipad.agent.run_once()
    case = get_exit(client, auth, case["id"])
    assert case["status"] == "completed"
    step = next(s for s in case["devices"][0]["steps"] if s["kind"] == "remove_school_apps")
    assert "removed when management ended" in step["detail"]
    assert ipad.apps() == {}


def test_a_failed_remove_mdm_can_be_retried(client, auth, tmp_path):
    person = learner(client, auth)
    ipad = Tablet(client, auth, tmp_path, "IPAD1", category="authorised", person_id=person)
    ipad.converge()
    case = open_exit(client, auth, person)
    remove_mdm = next(c for c in ipad.agent.checkin() if c["type"] == "RemoveMDM")
    ipad.agent.report(remove_mdm["id"], "error", "MDM profile is locked")
    case = get_exit(client, auth, case["id"])
    step = next(s for s in case["devices"][0]["steps"] if s["kind"] == "remove_mdm")
    assert step["status"] == "failed"
    assert (
        client.post(f"/api/v1/exits/{case['id']}/steps/{step['id']}/retry", headers=auth(Role.technician)).status_code
        == 200
    )
    ipad.agent.run_once()
    assert get_exit(client, auth, case["id"])["status"] == "completed"
    history = client.get(f"/api/v1/devices/{ipad.id}/commands", headers=auth(Role.admin)).json()["items"]
    assert [c["status"] for c in history if c["type"] == "RemoveMDM"] == ["error", "acknowledged"]


def test_second_case_is_409_and_dry_run_stores_nothing(client, auth, tmp_path):
    person = learner(client, auth)
    Tablet(client, auth, tmp_path, "IPAD1", category="authorised", person_id=person)
    plan = open_exit(client, auth, person, dry_run=True)
    assert plan["id"] is None
    assert [s["kind"] for s in plan["devices"][0]["steps"]][:2] == ["remove_school_apps", "remove_proxy"]
    assert client.get("/api/v1/exits", headers=auth(Role.admin)).json()["items"] == []
    future = (date.today() + timedelta(days=30)).isoformat()
    first = open_exit(client, auth, person, leaving_date=future)
    assert first["status"] == "scheduled"
    second = client.post("/api/v1/exits", json={"person_id": person}, headers=auth(Role.admin))
    assert second.status_code == 409
    assert second.json()["existing_id"] == first["id"]


def test_concurrent_requests_make_one_case(app, client, auth):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    person = learner(client, auth)
    headers = auth(Role.integration)
    barrier = threading.Barrier(6)

    def attempt(_: int) -> int:
        with TestClient(app) as own:
            barrier.wait()
            return own.post(
                "/api/v1/exits", json={"person_id": person, "leaving_date": "2099-07-22"}, headers=headers
            ).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        codes = sorted(pool.map(attempt, range(6)))
    assert codes == [201] + [409] * 5


def test_scheduled_case_starts_on_its_date_by_the_daily_job(client, auth, tmp_path, database):
    from exit_process.jobs import start_due_exits
    from mdm.scheduler import JobContext

    person = learner(client, auth)
    ipad = Tablet(client, auth, tmp_path, "IPAD1", category="authorised", person_id=person)
    case = open_exit(client, auth, person, leaving_date=(date.today() + timedelta(days=3)).isoformat())
    assert case["status"] == "scheduled"
    work = start_due_exits("Europe/London")
    context = JobContext(database, "start-due-exits", "slot", "test", timedelta(minutes=5))
    assert work(context).startswith("started 0")
    with database.write_engine.begin() as connection:
        connection.execute(text("UPDATE exit_case SET leaving_date = :d"), {"d": date.today()})
    assert work(context).startswith("started 1")
    assert get_exit(client, auth, case["id"])["status"] in ("in_progress", "completed")
    ipad.agent.run_once()
    assert get_exit(client, auth, case["id"])["status"] == "completed"


def test_bulk_leavers_import_is_all_or_nothing(client, auth):
    for i in range(3):
        learner(client, auth, f"L{i}")
    bad = "external_id,leaving_date,reason\nL0,2099-07-22,moved\nNOBODY,2099-07-22,\nL1,22/07/2099,\nL0,2099-07-22,\n"
    response = client.post("/api/v1/exits/import", content=bad, headers={**auth(Role.integration), **CSV})
    assert response.status_code == 422
    fields = {(e["line"], e["field"]) for e in response.json()["errors"]}
    assert fields == {(3, "external_id"), (4, "leaving_date"), (5, "external_id")}
    assert client.get("/api/v1/exits", headers=auth(Role.admin)).json()["items"] == []
    good = "external_id,leaving_date,reason\nL0,2099-07-22,moved\nL1,2099-07-22,\nL2,2099-07-22,year 13\n"
    result = client.post("/api/v1/exits/import", content=good, headers={**auth(Role.integration), **CSV}).json()
    assert (result["total"], result["scheduled"]) == (3, 3)


def test_leavers_import_answers_like_the_people_and_devices_imports(client, auth):
    """The same counts as every CSV import (each line opens a case), plus scheduled and started."""
    for i in range(3):
        learner(client, auth, f"L{i}")
    today = date.today().isoformat()
    leavers = f"external_id,leaving_date,reason,form\nL0,2099-07-22,moved,9X\nL1,2099-07-22,,9X\nL2,{today},,9Y\n"
    response = client.post("/api/v1/exits/import", content=leavers, headers={**auth(Role.integration), **CSV})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "total": 3,
        "created": 3,
        "updated": 0,
        "unchanged": 0,
        "scheduled": 2,
        "started": 1,
        "ignored_columns": ["form"],
    }
    assert len(client.get("/api/v1/exits", headers=auth(Role.admin)).json()["items"]) == 3


def test_two_thousand_leavers_plan_quickly(client, auth, database):
    import time

    csv = "external_id,kind,display_name,groups\n" + "".join(
        f"Y13-{i},learner,Leaver {i},Year 13\n" for i in range(2000)
    )
    client.post("/api/v1/people/import", content=csv, headers={**auth(Role.admin), **CSV})
    leavers = "external_id,leaving_date,reason\n" + "".join(f"Y13-{i},2099-07-22,end of year 13\n" for i in range(2000))
    started = time.perf_counter()
    result = client.post("/api/v1/exits/import", content=leavers, headers={**auth(Role.integration), **CSV})
    elapsed = time.perf_counter() - started
    assert result.status_code == 200, result.text[:300]
    assert result.json()["scheduled"] == 2000
    print(f"2,000 leavers planned in {elapsed:.1f} s")
