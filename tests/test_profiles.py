"""Profiles, apps and licences through the reconciler, with the reference agent as the device (in process)."""

import plistlib
import subprocess

import pytest

from mdm.actor import Role
from tests.fleet import PROXY, WIFI_FULL, WIFI_GUEST, Tablet, create_app, create_profile


def test_profiles_never_return_a_wifi_password(client, auth):
    created = create_profile(client, auth, "uk.sch.example.guest", [WIFI_GUEST])
    assert "password" not in str(created)
    assert "correct horse" not in client.get(f"/api/v1/profiles/{created['id']}", headers=auth(Role.auditor)).text
    assert created["version"] == 1


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"type": "passcode", "max_failed_attempts": 11}, "max_failed_attempts"),
        ({"type": "passcode", "min_length": 3}, "min_length"),
        ({"type": "proxy"}, "pac_url, or host and port"),
        ({"type": "proxy", "host": "proxy.example", "pac_url": "https://x.example/p.pac"}, "either"),
        ({"type": "wifi", "ssid": "X", "security": "wpa2_psk"}, "password"),
        ({"type": "wifi", "ssid": "X", "password": "abcdefgh"}, "certificate"),
        ({"type": "restrictions", "allow_teleport": True}, "allow_teleport"),
        ({"type": "vpn"}, "type"),
    ],
)
def test_bad_payloads_are_422_with_the_reason(client, auth, payload, words):
    body = {"name": "x", "identifier": "uk.sch.example.bad", "payloads": [payload]}
    response = client.post("/api/v1/profiles", json=body, headers=auth(Role.admin))
    assert response.status_code == 422
    assert words in str(response.json()["errors"])


def test_passcode_defaults_follow_cyber_essentials(client, auth):
    created = create_profile(client, auth, "uk.sch.example.passcode", [{"type": "passcode"}])
    assert created["payloads"][0]["min_length"] == 6
    assert created["payloads"][0]["max_failed_attempts"] == 10


def test_device_receives_profiles_and_apps_and_converges(client, auth, tmp_path):
    create_profile(client, auth, "uk.sch.example.proxy", [PROXY], categories=["authorised", "learner_owned"])
    create_profile(client, auth, "uk.sch.example.staffwifi", [WIFI_FULL], network_access=["full"])
    create_profile(client, auth, "uk.sch.example.shared-only", [{"type": "restrictions"}], categories=["school_shared"])
    create_app(client, auth, "com.example.maths", min_version="2.1")
    tablet = Tablet(client, auth, tmp_path, "T1")
    applied = tablet.converge()
    assert sorted(t for t, status in applied if status == "acknowledged") == [
        "InstallApplication",
        "InstallProfile",
        "InstallProfile",
    ]
    assert tablet.profiles() == {"uk.sch.example.proxy": 1, "uk.sch.example.staffwifi": 1}
    assert tablet.apps() == {"com.example.maths": True}
    assert tablet.inventory.app("com.example.maths").version == "2.1"
    desired = client.get(f"/api/v1/devices/{tablet.id}/desired-state", headers=auth(Role.technician)).json()
    reasons = {item["identifier"]: (item["because"], item["reported"]) for item in desired["items"]}
    assert reasons["uk.sch.example.proxy"] == (["category authorised"], "installed")
    assert reasons["uk.sch.example.staffwifi"] == (["network access full"], "installed")
    assert reasons["com.example.maths"] == (["required for authorised"], "installed")
    assert "uk.sch.example.shared-only" not in reasons
    history = client.get(f"/api/v1/devices/{tablet.id}/commands", headers=auth(Role.admin)).json()["items"]
    assert {c["status"] for c in history} == {"acknowledged"}


def test_psk_reaches_the_device_but_not_the_command_history(client, auth, tmp_path):
    create_profile(client, auth, "uk.sch.example.guest", [WIFI_GUEST])
    tablet = Tablet(client, auth, tmp_path, "T1")
    tablet.converge()
    installed = tablet.inventory.profile("uk.sch.example.guest")
    assert installed.payloads[0]["password"] == "correct horse"
    history = client.get(f"/api/v1/devices/{tablet.id}/commands", headers=auth(Role.auditor)).text
    assert "correct horse" not in history


def test_changed_profile_reaches_the_device_as_a_new_version(client, auth, tmp_path):
    profile = create_profile(client, auth, "uk.sch.example.proxy", [PROXY])
    tablet = Tablet(client, auth, tmp_path, "T1")
    tablet.converge()
    new_proxy = {"type": "proxy", "host": "proxy.example.sch.uk", "port": 3128}
    updated = client.put(f"/api/v1/profiles/{profile['id']}", json={"payloads": [new_proxy]}, headers=auth(Role.admin))
    assert updated.json()["version"] == 2
    applied = tablet.converge()
    assert applied == [("InstallProfile", "acknowledged")]
    assert tablet.profiles() == {"uk.sch.example.proxy": 2}
    assert tablet.inventory.profile("uk.sch.example.proxy").payloads[0]["host"] == "proxy.example.sch.uk"


def test_access_policy_change_swaps_the_wifi_profile(client, auth, tmp_path):
    create_profile(client, auth, "uk.sch.example.staffwifi", [WIFI_FULL], network_access=["full"])
    create_profile(client, auth, "uk.sch.example.guest", [WIFI_GUEST], network_access=["internet_only"])
    tablet = Tablet(client, auth, tmp_path, "T1")
    tablet.converge()
    assert set(tablet.profiles()) == {"uk.sch.example.staffwifi"}
    policy = {"allowed": True, "network_access": "internet_only"}
    client.put("/api/v1/access-policy/authorised", json=policy, headers=auth(Role.admin))
    applied = tablet.converge()
    assert sorted(t for t, _ in applied) == ["InstallProfile", "RemoveProfile"]
    assert set(tablet.profiles()) == {"uk.sch.example.guest"}
    client.put(
        "/api/v1/access-policy/authorised", json={"allowed": False, "network_access": "full"}, headers=auth(Role.admin)
    )
    tablet.converge()
    assert tablet.profiles() == {}  # not allowed: no network access, no network profiles


def test_deleted_profile_is_removed_and_foreign_profiles_left_alone(client, auth, tmp_path):
    profile = create_profile(client, auth, "uk.sch.example.proxy", [PROXY])
    tablet = Tablet(client, auth, tmp_path, "T1")
    tablet.inventory.profiles.append(_own_profile())
    tablet.agent.state.save()
    tablet.converge()
    assert client.delete(f"/api/v1/profiles/{profile['id']}", headers=auth(Role.admin)).status_code == 204
    assert tablet.converge() == [("RemoveProfile", "acknowledged")]
    assert tablet.profiles() == {"com.family.vpn": 3}


def _own_profile():  # type: ignore[no-untyped-def]
    from mdm.agent import Profile

    return Profile(identifier="com.family.vpn", version=3)


def test_family_apps_are_never_touched(client, auth, tmp_path):
    tablet = Tablet(client, auth, tmp_path, "T1")
    tablet.inventory.install_own_app("com.example.maths", "1.0")  # the family bought it themselves
    tablet.inventory.install_own_app("com.family.game", "4.2")
    tablet.agent.state.save()
    tablet.converge()  # the server now knows what the family has
    app = create_app(client, auth, "com.example.maths")
    applied = tablet.converge()
    assert applied == []  # their own copy of a school app is theirs: no install over it
    assert client.delete(f"/api/v1/apps/{app['id']}", headers=auth(Role.admin)).status_code == 204
    assert tablet.converge() == []
    assert tablet.apps() == {"com.example.maths": False, "com.family.game": False}
    commands = client.get(f"/api/v1/devices/{tablet.id}/commands", headers=auth(Role.admin)).json()["items"]
    assert commands == []


def test_removed_school_app_is_reinstalled_and_retired_app_removed(client, auth, tmp_path):
    app = create_app(client, auth, "com.example.maths")
    tablet = Tablet(client, auth, tmp_path, "T1")
    tablet.converge()
    tablet.inventory.remove_app("com.example.maths")  # a learner deleted it
    tablet.agent.state.save()
    assert tablet.converge() == [("InstallApplication", "acknowledged")]
    client.put(f"/api/v1/apps/{app['id']}", json={"required_for": ["school_shared"]}, headers=auth(Role.admin))
    assert tablet.converge() == [("RemoveApplication", "acknowledged")]
    assert tablet.apps() == {}


def test_licences_add_up_and_never_go_below_zero(client, auth, tmp_path):
    app = create_app(
        client, auth, "com.example.science", licence="school", licences_total=2, required_for=["school_single_user"]
    )
    # School iPads: the one erased below must be the school's (a family's device is never erased).
    tablets = [Tablet(client, auth, tmp_path, f"T{i}", category="school_single_user") for i in range(3)]
    for tablet in tablets:
        tablet.converge()
    holders = [t for t in tablets if "com.example.science" in t.apps()]
    assert len(holders) == 2
    state = client.get(f"/api/v1/apps/{app['id']}", headers=auth(Role.admin)).json()
    assert (state["licences_assigned"], state["licences_short"]) == (2, 1)
    waiting = next(t for t in tablets if t not in holders)
    desired = client.get(f"/api/v1/devices/{waiting.id}/desired-state", headers=auth(Role.admin)).json()
    assert any("waiting for a licence" in item["reported"] for item in desired["items"])
    # A failed install gives its licence back.
    fresh = Tablet(client, auth, tmp_path, "T9", category="learner_owned")
    client.put(
        f"/api/v1/apps/{app['id']}",
        json={"licences_total": 3, "required_for": ["school_single_user", "learner_owned"]},
        headers=auth(Role.admin),
    )
    waiting.inventory.refuse_next.clear()
    fresh_commands = fresh.agent.checkin()
    waiting_commands = waiting.agent.checkin()
    granted = [c for c in fresh_commands + waiting_commands if c["type"] == "InstallApplication"]
    assert len(granted) == 1  # three licences, two held: one more install, not two
    client.post(
        f"/api/v1/devices/{tablets[0].id}/commands",
        json={"type": "EraseDevice", "confirm": True},
        headers=auth(Role.admin),
    )
    state = client.get(f"/api/v1/apps/{app['id']}", headers=auth(Role.admin)).json()
    assert state["licences_assigned"] == 3
    for command in granted:
        owner = fresh if command in fresh_commands else waiting
        owner.agent.report(command["id"], "error", "App Store unavailable")
    assert client.get(f"/api/v1/apps/{app['id']}", headers=auth(Role.admin)).json()["licences_assigned"] == 2
    erased = tablets[0].agent.run_once()  # the erase is acknowledged: the device leaves, its licence returns
    assert erased.unenrolled
    assert client.get(f"/api/v1/apps/{app['id']}", headers=auth(Role.admin)).json()["licences_assigned"] == 1


def test_shrinking_a_pool_below_what_is_in_use_is_refused(client, auth, tmp_path):
    app = create_app(client, auth, "com.example.science", licence="school", licences_total=2)
    Tablet(client, auth, tmp_path, "T1").converge()
    response = client.put(f"/api/v1/apps/{app['id']}", json={"licences_total": 0}, headers=auth(Role.admin))
    assert response.status_code == 409


def test_group_scoped_profile_follows_the_mis(client, auth, tmp_path):
    person = client.post(
        "/api/v1/people",
        json={"external_id": "A1", "kind": "learner", "display_name": "Ann", "groups": ["Year 8"]},
        headers=auth(Role.admin),
    ).json()
    create_profile(
        client, auth, "uk.sch.example.year9", [{"type": "restrictions", "allow_camera": False}], groups=["Year 9"]
    )
    tablet = Tablet(client, auth, tmp_path, "T1", person_id=person["id"])
    tablet.converge()
    assert tablet.profiles() == {}
    csv = "external_id,kind,display_name,groups\nA1,learner,Ann,Year 9\n"
    client.post("/api/v1/people/import", content=csv, headers={**auth(Role.integration), "content-type": "text/csv"})
    tablet.converge()
    assert tablet.profiles() == {"uk.sch.example.year9": 1}


def test_reconciling_twice_queues_nothing_new(client, auth, tmp_path, database, app):
    from mdm.desired_state import DeviceSelector
    from profiles.reconciler import reconcile

    create_profile(client, auth, "uk.sch.example.proxy", [PROXY])
    create_app(client, auth, "com.example.maths")
    Tablet(client, auth, tmp_path, "T1")
    with database.writing() as session:
        again = reconcile(session, DeviceSelector(everyone=True))
    assert (again.queued, again.cancelled) == (0, 0)


def test_mobileconfig_is_signed_and_valid_for_apple(client, auth, tmp_path):
    from tests.apple_schema import require_fixtures, validate_profile

    profile = create_profile(
        client,
        auth,
        "uk.sch.example.all",
        [
            WIFI_FULL,
            PROXY,
            {"type": "web_filter", "denied_urls": ["https://bad.example"]},
            {"type": "passcode"},
            {"type": "restrictions", "allow_camera": False},
        ],
    )
    tablet = Tablet(client, auth, tmp_path, "T1")
    response = client.get(
        f"/api/v1/devices/{tablet.id}/profiles/{profile['id']}.mobileconfig", headers=auth(Role.technician)
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-apple-aspen-config"
    (tmp_path / "signed.der").write_bytes(response.content)
    (tmp_path / "ca.pem").write_text(client.get("/api/v1/pki/ca.pem").text)
    verified = subprocess.run(
        [
            "openssl",
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-CAfile",
            tmp_path / "ca.pem",
            "-in",
            tmp_path / "signed.der",
            "-out",
            tmp_path / "out.plist",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    document = plistlib.loads((tmp_path / "out.plist").read_bytes())
    assert document["PayloadIdentifier"] == "uk.sch.example.all"
    require_fixtures()
    assert validate_profile(document) == []
    assert (
        client.get(
            f"/api/v1/devices/{tablet.id}/profiles/{profile['id']}.mobileconfig", headers=auth(Role.integration)
        ).status_code
        == 403
    )


def test_a_device_fetches_only_its_own_profiles(client, auth, tmp_path):
    from tests.pki import signed_headers

    mine = create_profile(client, auth, "uk.sch.example.proxy", [PROXY])
    other = create_profile(client, auth, "uk.sch.example.shared", [PROXY], categories=["school_shared"])
    tablet = Tablet(client, auth, tmp_path, "T1")
    key = tablet.agent.state.ensure_key()

    def fetch(profile_id: str):  # type: ignore[no-untyped-def]
        path = f"/api/v1/devices/{tablet.id}/profiles/{profile_id}.mobileconfig"
        return client.get(path, headers=signed_headers(key, "GET", path, b""))

    assert fetch(mine["id"]).status_code == 200
    assert fetch(other["id"]).status_code == 404
