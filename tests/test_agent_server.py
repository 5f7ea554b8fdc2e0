"""The reference agent against a real server process over real HTTP, on SQLite and PostgreSQL."""

import subprocess
import sys

import httpx
import pytest

from mdm.actor import Role
from mdm.agent import AgentClient, AgentError, AgentState, enroll_device, run_device
from tests.live_server import running_server
from tests.pki import openssl_crl_verdict


@pytest.fixture
def server(settings):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with running_server(settings.data_dir, settings.resolved_database_url) as base_url:
        yield base_url


@pytest.fixture
def api(server, make_token):
    headers = {"Authorization": f"Bearer {make_token(Role.admin)}"}
    with httpx.Client(base_url=server, headers=headers, timeout=10) as client:
        yield client


def _token(api, category: str = "school_single_user", **fields) -> dict:
    response = api.post("/api/v1/enrollment-tokens", json={"category": category, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def test_agent_enrols_checks_in_and_obeys_a_lock(server, api, tmp_path):
    state_dir = tmp_path / "ipad"
    device_id = enroll_device(
        state_dir, server, _token(api)["token"], {"serial": "LIVE1", "platform": "ipados", "os_version": "17.5.1"}
    )
    assert (state_dir / "device.key.pem").stat().st_mode & 0o777 == 0o600
    first = run_device(state_dir)
    assert [r.applied for r in first] == [[]]
    assert api.get(f"/api/v1/devices/{device_id}").json()["last_checkin_at"] is not None

    lock = api.post(f"/api/v1/devices/{device_id}/commands", json={"type": "DeviceLock", "message": "See IT"}).json()
    rounds = run_device(state_dir)
    applied = [a for r in rounds for a in r.applied]
    assert [(a.id, a.outcome.status) for a in applied] == [(lock["id"], "acknowledged")]
    assert AgentState.load(state_dir).inventory.locked is True
    history = api.get(f"/api/v1/devices/{device_id}/commands").json()["items"]
    assert history[0]["status"] == "acknowledged"


def test_a_busy_device_answers_not_now_and_gets_the_command_later(server, api, tmp_path):
    state_dir = tmp_path / "ipad"
    device_id = enroll_device(state_dir, server, _token(api)["token"], {"serial": "LIVE2", "platform": "ipados"})
    state = AgentState.load(state_dir)
    state.inventory.refuse_next.add("DeviceLock")
    state.save()
    api.post(f"/api/v1/devices/{device_id}/commands", json={"type": "DeviceLock"})
    run_device(state_dir)
    history = api.get(f"/api/v1/devices/{device_id}/commands").json()["items"]
    assert history[0]["status"] == "not_now"
    assert history[0]["not_before"] is not None


def test_erased_school_device_is_back_in_stock_and_shut_out(server, api, tmp_path):
    state_dir = tmp_path / "ipad"
    device_id = enroll_device(state_dir, server, _token(api)["token"], {"serial": "LIVE3", "platform": "ipados"})
    certificate = (state_dir / "device.cert.pem").read_text()
    api.post(f"/api/v1/devices/{device_id}/commands", json={"type": "EraseDevice", "confirm": True})
    run_device(state_dir)
    device = api.get(f"/api/v1/devices/{device_id}").json()
    assert device["state"] == "in_stock"
    assert device["person_id"] is None
    verdict = openssl_crl_verdict(
        tmp_path,
        certificate,
        httpx.get(f"{server}/api/v1/pki/ca.pem").text,
        httpx.get(f"{server}/api/v1/pki/crl").content,
    )
    assert "certificate revoked" in verdict
    # The wiped device enrols again with the cart's token and gets a new identity.
    again = enroll_device(state_dir, server, _token(api)["token"], {"serial": "LIVE3", "platform": "ipados"})
    assert again == device_id
    assert (state_dir / "device.cert.pem").read_text() != certificate
    assert api.get(f"/api/v1/devices/{device_id}").json()["state"] == "enrolled"


def test_refusals_reach_the_agent_as_problem_details(server, api, tmp_path):
    token = _token(api, category="learner_owned")
    with pytest.raises(AgentError) as refused:
        enroll_device(tmp_path / "phone", server, token["token"], {"platform": "android"}, aup_accepted=False)
    assert refused.value.status == 422
    assert "acceptable use policy" in str(refused.value)


def test_agent_cli_enrols_from_the_qr_link_and_runs(server, api, tmp_path):
    link = _token(api, category="learner_owned")["enroll_url"]
    state_dir = tmp_path / "phone"
    mdm = [sys.executable, "-m", "mdm", "agent"]
    enrolled = subprocess.run(
        [*mdm, "enroll", "--state-dir", state_dir, "--token", link, "--platform", "android", "--accept-aup"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    device_id = enrolled.stdout.strip()
    assert api.get(f"/api/v1/devices/{device_id}").json()["category"] == "learner_owned"
    api.post(f"/api/v1/devices/{device_id}/commands", json={"type": "DeviceLock", "message": "Hi"})
    ran = subprocess.run(
        [*mdm, "run", "--state-dir", state_dir], capture_output=True, text=True, timeout=60, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert "DeviceLock -> acknowledged" in ran.stdout
    used = subprocess.run(
        [*mdm, "enroll", "--state-dir", tmp_path / "other", "--token", link, "--accept-aup"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert used.returncode == 1
    assert "409" in used.stderr


def test_profiles_apps_and_policy_changes_over_real_http(server, api, tmp_path):
    """Enrol, receive profiles and apps; a changed profile arrives as a new version; a policy change swaps the Wi-Fi."""
    staff_wifi = {"type": "wifi", "ssid": "School-Staff", "security": "wpa2_enterprise"}
    guest_wifi = {"type": "wifi", "ssid": "School-Guest", "security": "wpa2_psk", "password": "guest-pass-1"}
    proxy = api.post(
        "/api/v1/profiles",
        json={
            "name": "Filter",
            "identifier": "uk.sch.example.proxy",
            "payloads": [{"type": "proxy", "pac_url": "https://f.example/p.pac"}],
        },
    )
    assert proxy.status_code == 201, proxy.text
    for identifier, payload, access in (
        ("uk.sch.example.staff", staff_wifi, "full"),
        ("uk.sch.example.guest", guest_wifi, "internet_only"),
    ):
        created = api.post(
            "/api/v1/profiles",
            json={
                "name": identifier,
                "identifier": identifier,
                "payloads": [payload],
                "scope": {"network_access": [access]},
            },
        )
        assert created.status_code == 201, created.text
    app = api.post(
        "/api/v1/apps",
        json={
            "identifier": "com.example.maths",
            "name": "Maths",
            "platform": "ios",
            "licence": "school",
            "licences_total": 1,
            "required_for": ["authorised"],
        },
    ).json()
    state_dir = tmp_path / "ipad"
    enroll_device(
        state_dir,
        server,
        _token(api, category="authorised")["token"],
        {"serial": "LIVE9", "platform": "ipados"},
        aup_accepted=True,
    )
    run_device(state_dir)
    inventory = AgentState.load(state_dir).inventory
    assert {p.identifier: p.version for p in inventory.profiles} == {
        "uk.sch.example.proxy": 1,
        "uk.sch.example.staff": 1,
    }
    assert [(a.identifier, a.managed) for a in inventory.apps] == [("com.example.maths", True)]
    assert api.get(f"/api/v1/apps/{app['id']}").json()["licences_assigned"] == 1

    api.put(
        f"/api/v1/profiles/{proxy.json()['id']}",
        json={"payloads": [{"type": "proxy", "host": "p.example", "port": 8080}]},
    )
    api.put("/api/v1/access-policy/authorised", json={"allowed": True, "network_access": "internet_only"})
    run_device(state_dir)
    inventory = AgentState.load(state_dir).inventory
    assert {p.identifier: p.version for p in inventory.profiles} == {
        "uk.sch.example.proxy": 2,
        "uk.sch.example.guest": 1,
    }
    assert inventory.profile("uk.sch.example.guest").payloads[0]["password"] == "guest-pass-1"


def test_leavers_over_real_http(server, api, tmp_path, database):
    """The exit end to end: an authorised iPad keeps only the family's apps; a school iPad is wiped and in
    stock; a held one is not wiped; an offline phone is forced with a note once overdue."""
    from datetime import date, timedelta

    from sqlalchemy import text

    for name in ("maths", "science", "reader"):
        api.post(
            "/api/v1/apps",
            json={
                "identifier": f"com.school.{name}",
                "name": name,
                "platform": "ios",
                "licence": "school",
                "licences_total": 10,
                "required_for": ["authorised"],
            },
        ).raise_for_status()
    api.post(
        "/api/v1/profiles",
        json={
            "name": "Filter",
            "identifier": "uk.sch.example.proxy",
            "payloads": [{"type": "proxy", "pac_url": "https://f.example/p.pac"}],
        },
    ).raise_for_status()
    api.post(
        "/api/v1/profiles",
        json={
            "name": "Wi-Fi",
            "identifier": "uk.sch.example.wifi",
            "payloads": [{"type": "wifi", "ssid": "School", "security": "wpa2_enterprise"}],
        },
    ).raise_for_status()
    people = "external_id,kind,display_name\nA1,learner,Ann\nB1,learner,Ben\nC1,learner,Cat\nD1,learner,Dan\n"
    api.post("/api/v1/people/import", content=people, headers={"content-type": "text/csv"}).raise_for_status()
    ids = {p["external_id"]: p["id"] for p in api.get("/api/v1/people").json()["items"]}

    def enrol(external_id: str, category: str, serial: str):  # type: ignore[no-untyped-def]
        token = _token(api, category=category, person_id=ids[external_id])["token"]
        state_dir = tmp_path / serial
        device_id = enroll_device(state_dir, server, token, {"serial": serial, "platform": "ipados"}, aup_accepted=True)
        return device_id, state_dir

    ipad, ipad_dir = enrol("A1", "authorised", "FAMILY1")
    state = AgentState.load(ipad_dir)
    state.inventory.install_own_app("com.family.game", "1.0")
    state.inventory.install_own_app("com.family.music", "3.2")
    state.save()
    run_device(ipad_dir)
    school, school_dir = enrol("B1", "school_single_user", "STOCK1")
    held, held_dir = enrol("C1", "school_shared", "STOCK2")
    _phone, phone_dir = enrol("D1", "learner_owned", "PHONE1")
    for state_dir in (school_dir, held_dir, phone_dir):
        run_device(state_dir)
    api.put(f"/api/v1/devices/{held}/hold", json={"held": True, "reason": "confiscated"}).raise_for_status()
    certificate = (ipad_dir / "device.cert.pem").read_text()

    cases = {}
    for external_id in ("A1", "B1", "C1", "D1"):
        opened = api.post("/api/v1/exits", json={"person_id": ids[external_id], "reason": "left"})
        assert opened.status_code == 201, opened.text
        cases[external_id] = opened.json()
    for case in (cases["B1"], cases["C1"]):
        collect = next(s for s in case["devices"][0]["steps"] if s["kind"] == "collect_device")
        api.post(
            f"/api/v1/exits/{case['id']}/steps/{collect['id']}/complete", json={"note": "handed in"}
        ).raise_for_status()
    for state_dir in (ipad_dir, school_dir, held_dir):
        run_device(state_dir)

    inventory = AgentState.load(ipad_dir).inventory
    assert sorted(a.identifier for a in inventory.apps) == ["com.family.game", "com.family.music"]
    assert inventory.profiles == []
    assert api.get(f"/api/v1/exits/{cases['A1']['id']}").json()["status"] == "completed"
    verdict = openssl_crl_verdict(
        tmp_path,
        certificate,
        httpx.get(f"{server}/api/v1/pki/ca.pem").text,
        httpx.get(f"{server}/api/v1/pki/crl").content,
    )
    assert "certificate revoked" in verdict
    assert api.get(f"/api/v1/devices/{ipad}").json()["state"] == "retired"

    stock = api.get(f"/api/v1/devices/{school}").json()
    assert (stock["state"], stock["person_id"]) == ("in_stock", None)
    assert api.get(f"/api/v1/exits/{cases['B1']['id']}").json()["status"] == "completed"

    assert api.get(f"/api/v1/devices/{held}").json()["state"] == "exiting"
    held_steps = {s["kind"]: s for s in api.get(f"/api/v1/exits/{cases['C1']['id']}").json()["devices"][0]["steps"]}
    assert held_steps["wipe"]["status"] == "pending"
    assert "held" in held_steps["wipe"]["detail"]

    with database.write_engine.begin() as connection:  # the phone never came back: two weeks pass
        connection.execute(
            text("UPDATE exit_case SET leaving_date = :d WHERE id = :id"),
            {"d": date.today() - timedelta(days=15), "id": cases["D1"]["id"]},
        )
    revoke = next(s for s in cases["D1"]["devices"][0]["steps"] if s["kind"] == "revoke_certificate")
    forced = api.post(
        f"/api/v1/exits/{cases['D1']['id']}/steps/{revoke['id']}/complete",
        json={"note": "left the country; the phone never came back online"},
    )
    assert forced.status_code == 200, forced.text
    assert forced.json()["status"] == "completed_with_exceptions"
    with pytest.raises(AgentError) as refused:
        run_device(phone_dir)
    assert refused.value.status == 403


def _run_compliance(api) -> dict:  # type: ignore[no-untyped-def]
    import time

    run_id = api.post("/api/v1/compliance/runs").json()["id"]
    for _ in range(200):
        run = api.get(f"/api/v1/compliance/runs/{run_id}").json()
        if run["status"] != "running":
            return run
        time.sleep(0.05)
    raise AssertionError("the compliance run did not finish")


def test_remediation_and_quarantine_over_real_http(server, api, tmp_path, database):
    from sqlalchemy import text

    api.post(
        "/api/v1/apps",
        json={
            "identifier": "com.school.maths",
            "name": "Maths",
            "platform": "ios",
            "licence": "free",
            "required_for": ["authorised"],
        },
    ).raise_for_status()
    api.post(
        "/api/v1/profiles",
        json={
            "name": "Wi-Fi",
            "identifier": "uk.sch.example.wifi",
            "payloads": [{"type": "wifi", "ssid": "School", "security": "wpa2_enterprise"}],
        },
    ).raise_for_status()
    state_dir = tmp_path / "ipad"
    device_id = enroll_device(
        state_dir,
        server,
        _token(api, category="authorised")["token"],
        {"serial": "Q1", "platform": "ipados"},
        aup_accepted=True,
    )
    state = AgentState.load(state_dir)
    state.inventory.passcode_set, state.inventory.os_version = True, "17.5.1"
    state.save()
    run_device(state_dir)
    assert _run_compliance(api)["compliant"] == 1

    # A learner deletes the school app and the install that follows fails: tonight's run queues it again.
    state = AgentState.load(state_dir)
    state.inventory.remove_app("com.school.maths")
    state.inventory.jailbroken = True  # and the device is jailbroken, which no command can fix
    state.save()
    with AgentClient(server, state) as agent:
        reinstall = agent.checkin()
        agent.report(reinstall[0]["id"], "error", "App Store unreachable")
    run = _run_compliance(api)
    assert (run["non_compliant"], run["remediated"]) == (1, 1)
    run_device(state_dir)
    assert AgentState.load(state_dir).inventory.app("com.school.maths") is not None

    # Still jailbroken after the grace period: quarantined, and the Wi-Fi goes.
    with database.write_engine.begin() as connection:
        connection.execute(text("UPDATE device SET compliance_failing_since = '2020-01-01 00:00:00'"))
    assert _run_compliance(api)["quarantined"] == 1
    assert api.get(f"/api/v1/devices/{device_id}").json()["network_access"] == "none"
    run_device(state_dir)
    assert AgentState.load(state_dir).inventory.profiles == []

    # Fixed: the quarantine lifts itself and the Wi-Fi comes back.
    state = AgentState.load(state_dir)
    state.inventory.jailbroken = False
    state.save()
    run_device(state_dir)
    assert _run_compliance(api)["released"] == 1
    run_device(state_dir)
    assert [p.identifier for p in AgentState.load(state_dir).inventory.profiles] == ["uk.sch.example.wifi"]
