"""The compliance run end to end with the reference agent: verdicts, history, remediation, quarantine."""

import time

from sqlalchemy import text

from compliance.os_releases import service as os_releases
from compliance.service import run_compliance
from mdm.actor import Role
from mdm.devices.models import Device
from mdm.settings import Settings
from tests.fleet import WIFI_FULL, Tablet, create_app, create_profile
from tests.test_inventory import NOW, enrolled_device, report


def device(client, auth, device_id: str) -> dict:
    return client.get(f"/api/v1/devices/{device_id}", headers=auth(Role.admin)).json()


def test_removed_app_is_caught_and_put_back(client, auth, tmp_path, database):
    create_app(client, auth, "com.school.maths")
    ipad = Tablet(client, auth, tmp_path, "IPAD1")
    ipad.converge()
    run = run_compliance(database, "test")
    assert (run.devices_evaluated, run.compliant) == (1, 1)
    ipad.inventory.remove_app("com.school.maths")  # a learner deletes it
    ipad.agent.state.save()
    reinstall = ipad.agent.checkin()  # the reconciler sees it at once and queues the app again...
    assert [c["type"] for c in reinstall] == ["InstallApplication"]
    ipad.agent.report(reinstall[0]["id"], "error", "App Store unreachable")  # ...but the install fails
    run = run_compliance(database, "test")
    assert run.non_compliant == 1
    assert run.remediated == 1  # and tonight's run queues it once more
    verdict = device(client, auth, ipad.id)["compliance"]
    assert verdict["status"] == "non_compliant"
    assert verdict["failures"] == [{"rule": "required_apps", "detail": "com.school.maths missing"}]
    ipad.converge()
    assert run_compliance(database, "test").compliant == 1
    history = client.get(f"/api/v1/devices/{ipad.id}/compliance", headers=auth(Role.auditor)).json()["history"]
    assert [h["status"] for h in history] == ["compliant", "non_compliant", "compliant"]


def test_unchanged_devices_add_no_history(client, auth, tmp_path, database):
    Tablet(client, auth, tmp_path, "IPAD1").converge()
    run_compliance(database, "test")
    second = run_compliance(database, "test")
    assert second.changed == 0
    with database.read_engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM compliance_history")).scalar_one() == 1


def test_quarantine_after_the_grace_period_and_release_when_fixed(client, auth, tmp_path, database):
    create_profile(client, auth, "uk.sch.example.wifi", [WIFI_FULL])
    ipad = Tablet(client, auth, tmp_path, "IPAD1")
    ipad.inventory.jailbroken = True
    ipad.agent.state.save()
    ipad.converge()
    assert set(ipad.profiles()) == {"uk.sch.example.wifi"}
    run_compliance(database, "test")
    assert device(client, auth, ipad.id)["network_access"] == "full"  # failing, within the grace period
    with database.write_engine.begin() as connection:
        connection.execute(text("UPDATE device SET compliance_failing_since = '2020-01-01 00:00:00'"))
    run = run_compliance(database, "test")
    assert run.quarantined == 1
    seen = device(client, auth, ipad.id)
    assert seen["network_access"] == "none"
    assert seen["compliance"]["quarantined_at"] is not None
    ipad.converge()
    assert ipad.profiles() == {}  # the Wi-Fi went with the network access
    ipad.inventory.jailbroken = False
    ipad.agent.state.save()
    ipad.converge()
    run = run_compliance(database, "test")
    assert run.released == 1
    assert device(client, auth, ipad.id)["network_access"] == "full"
    ipad.converge()
    assert set(ipad.profiles()) == {"uk.sch.example.wifi"}


def test_school_categories_can_be_exempt_from_quarantine(client, auth, tmp_path, database):
    ipad = Tablet(client, auth, tmp_path, "CART1", category="school_shared")
    ipad.inventory.jailbroken = True
    ipad.agent.state.save()
    ipad.converge()
    with database.write_engine.begin() as connection:
        connection.execute(text("UPDATE compliance_escalation SET quarantine = false WHERE category = 'school_shared'"))
    run_compliance(database, "test")
    with database.write_engine.begin() as connection:
        connection.execute(text("UPDATE device SET compliance_failing_since = '2020-01-01 00:00:00'"))
    assert run_compliance(database, "test").quarantined == 0


def test_rules_api_and_manual_runs(client, auth, tmp_path):
    Tablet(client, auth, tmp_path, "IPAD1").converge()
    rules = client.get("/api/v1/compliance/rules", headers=auth(Role.auditor)).json()["items"]
    by_id = {rule["id"]: rule for rule in rules}
    assert by_id["os_updates"]["params"] == {"grace_days": 14}
    assert "Cyber Essentials" in by_id["os_updates"]["source"]
    assert by_id["age_rating"]["enabled"] is False
    changed = client.put(
        "/api/v1/compliance/rules/checked_in_recently", json={"params": {"days": 3}}, headers=auth(Role.admin)
    )
    assert changed.json()["params"]["days"] == 3
    bad = client.put(
        "/api/v1/compliance/rules/checked_in_recently", json={"params": {"weeks": 1}}, headers=auth(Role.admin)
    )
    assert bad.status_code == 422
    assert (
        client.put(
            "/api/v1/compliance/rules/passcode", json={"enabled": False}, headers=auth(Role.technician)
        ).status_code
        == 403
    )
    started = client.post("/api/v1/compliance/runs", headers=auth(Role.technician))
    assert started.status_code == 202
    run_id = started.json()["id"]
    for _ in range(100):
        run = client.get(f"/api/v1/compliance/runs/{run_id}", headers=auth(Role.auditor)).json()
        if run["status"] != "running":
            break
        time.sleep(0.05)
    assert run["status"] == "completed"
    assert run["devices_evaluated"] == 1
    summary = client.get("/api/v1/compliance/summary", headers=auth(Role.auditor)).json()
    assert summary["by_status"] == {"compliant": 1}


def test_noncompliant_csv_names_the_person_and_the_reasons(client, auth, tmp_path, database):
    person = client.post(
        "/api/v1/people",
        json={"external_id": "A1", "kind": "learner", "display_name": "Ann Smith"},
        headers=auth(Role.admin),
    ).json()
    ipad = Tablet(client, auth, tmp_path, "IPAD1", person_id=person["id"])
    ipad.inventory.passcode_set = False
    ipad.agent.state.save()
    ipad.converge()
    run_compliance(database, "test")
    response = client.get("/api/v1/compliance/noncompliant.csv", headers=auth(Role.technician))
    assert response.headers["content-type"].startswith("text/csv")
    lines = response.text.strip().splitlines()
    assert len(lines) == 2
    assert "A1" in lines[1]
    assert "Ann Smith" in lines[1]
    assert "passcode: no passcode is set" in lines[1]


def test_webhooks_are_queued_for_compliance_and_exit_events(app, client, auth, tmp_path, database):
    # Nothing is sent here; the loopback URL only needs registering (MDM_WEBHOOK_ALLOWED_HOSTS).
    app.state.settings = Settings(**{**app.state.settings.model_dump(), "webhook_allowed_hosts": "127.0.0.1"})
    hook = client.post(
        "/api/v1/webhooks",
        json={
            "url": "http://127.0.0.1:9/hook",
            "events": [
                "device.enrolled",
                "device.noncompliant",
                "device.compliant",
                "compliance.run_completed",
                "exit.completed",
            ],
        },
        headers=auth(Role.admin),
    ).json()
    person = client.post(
        "/api/v1/people", json={"external_id": "A1", "kind": "learner", "display_name": "Ann"}, headers=auth(Role.admin)
    ).json()
    ipad = Tablet(client, auth, tmp_path, "IPAD1", person_id=person["id"])
    ipad.inventory.passcode_set = False
    ipad.agent.state.save()
    ipad.converge()
    run_compliance(database, "test")
    client.post("/api/v1/exits", json={"person_id": person["id"]}, headers=auth(Role.admin))
    ipad.agent.run_once()
    deliveries = client.get(f"/api/v1/webhooks/{hook['id']}/deliveries?limit=100", headers=auth(Role.admin)).json()[
        "items"
    ]
    types = sorted(d["event_type"] for d in deliveries)
    assert types == ["compliance.run_completed", "device.enrolled", "device.noncompliant", "exit.completed"]


def test_os_rules_use_the_loaded_release_data(client, auth, tmp_path, database):
    from datetime import date, timedelta

    ipad = Tablet(client, auth, tmp_path, "IPAD1")  # reports iPadOS 17.5.1
    ipad.converge()
    old = (date.today() - timedelta(days=40)).isoformat()
    recent = (date.today() - timedelta(days=3)).isoformat()
    document = {
        "releases": [
            {"platform": "ipados", "version": "17.5.1", "released_at": old},
            {"platform": "ipados", "version": "17.6", "released_at": old, "security": True},
            {"platform": "ipados", "version": "17.6.1", "released_at": recent, "security": True},
        ],
        "minimum_supported": [{"platform": "ipados", "version": "16.0"}],
    }
    loaded = client.post("/api/v1/os-releases", json=document, headers=auth(Role.admin))
    assert loaded.status_code in (200, 201), loaded.text
    run_compliance(database, "test")
    failures = device(client, auth, ipad.id)["compliance"]["failures"]
    assert [f["rule"] for f in failures] == ["os_updates"]
    assert "behind 17.6," in failures[0]["detail"]  # 17.6.1 is still inside its 14 days


def test_cli_compliance_run_prints_the_counts(client, auth, tmp_path, settings):
    import json
    import subprocess
    import sys

    Tablet(client, auth, tmp_path, "IPAD1").converge()
    env = {"MDM_DATA_DIR": str(settings.data_dir), "MDM_DATABASE_URL": settings.resolved_database_url}
    result = subprocess.run(
        [sys.executable, "-m", "mdm", "compliance", "run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert (counts["status"], counts["devices_evaluated"], counts["compliant"]) == ("completed", 1, 1)


def test_a_manual_run_whose_process_died_is_marked_abandoned_by_the_next_run(client, auth, database):
    from compliance.service import start_run

    dead, alive = start_run(database, "manual: cli:killed"), start_run(database, "manual: cli:still going")
    with database.writing() as session:
        session.execute(
            text("UPDATE compliance_run SET started_at = :t, heartbeat_at = :t WHERE id = :id"),
            {"t": "2026-01-01 00:00:00", "id": dead},
        )
    run_compliance(database, "manual: cli:next")
    runs = {i: client.get(f"/api/v1/compliance/runs/{i}", headers=auth(Role.auditor)).json() for i in (dead, alive)}
    assert runs[dead]["status"] == "abandoned"
    assert "no progress" in runs[dead]["detail"]
    assert runs[alive]["status"] == "running"


def test_a_device_reporting_in_pieces_is_judged_on_the_merged_inventory(database):
    device_id = enrolled_device(database)
    with database.writing() as session:
        os_releases.load_document(session, {"minimum_supported": [{"platform": "ipados", "version": "17"}]})
    # Apple's answers, one query at a time: DeviceInformation, SecurityInfo, InstalledApplicationList.
    report(database, device_id, {"os_version": "16.7.2", "build": "20H115"}, partial=True)
    report(database, device_id, {"passcode_set": False, "encrypted": True}, partial=True)
    report(database, device_id, {"apps": []}, partial=True)
    run_compliance(database, "test", now=NOW)
    with database.reading() as session:
        judged = session.get(Device, device_id)
        assert judged is not None
        assert judged.compliance_status == "non_compliant"
        assert {f["rule"]: f["detail"] for f in judged.compliance_failures} == {
            "os_supported": "ipados 16.7.2 is below 17, the oldest version still supported",
            "passcode": "no passcode is set",
        }
