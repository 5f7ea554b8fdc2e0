"""The device registry: pre-registration by serial (one or by CSV), filters and the access policy."""

from mdm.actor import Role

CSV = {"content-type": "text/csv"}
DEVICE_HEADER = "serial,platform,model,category,asset_tag,person_external_id\n"


def _person(client, auth, external_id: str = "UPN1") -> str:
    body = {"external_id": external_id, "kind": "learner", "display_name": "Ann"}
    return client.post("/api/v1/people", json=body, headers=auth(Role.admin)).json()["id"]


def test_preregistered_device_is_registered_with_policy_network_access(client, auth):
    person_id = _person(client, auth)
    body = {
        "serial": "dmpxk0abcd12",
        "platform": "ipados",
        "model": "iPad (10th gen)",
        "category": "school_shared",
        "asset_tag": "IT-0042",
        "person_id": person_id,
    }
    response = client.post("/api/v1/devices", json=body, headers=auth(Role.technician))
    assert response.status_code == 201, response.text
    device = client.get(f"/api/v1/devices/{response.json()['id']}", headers=auth(Role.auditor)).json()
    assert device["serial"] == "DMPXK0ABCD12"
    assert device["state"] == "registered"
    assert device["held"] is False
    assert device["network_access"] == "full"
    assert device["compliance"] == {
        "status": "unknown",
        "failures": [],
        "evaluated_at": None,
        "failing_since": None,
        "quarantined_at": None,
    }
    assert device["person_id"] == person_id


def test_duplicate_serial_is_409_with_the_existing_id(client, auth):
    body = {"serial": "DMPXK0ABCD12", "platform": "ipados"}
    first = client.post("/api/v1/devices", json=body, headers=auth(Role.admin)).json()
    again = client.post("/api/v1/devices", json={**body, "serial": "dmpxk0abcd12"}, headers=auth(Role.admin))
    assert again.status_code == 409
    assert again.json()["existing_id"] == first["id"]


def test_personal_devices_are_not_preregistered(client, auth):
    body = {"serial": "R58N123ABC", "platform": "android", "category": "learner_owned"}
    response = client.post("/api/v1/devices", json=body, headers=auth(Role.admin))
    assert response.status_code == 422
    assert "enrol" in response.json()["detail"]


def test_unknown_person_is_refused(client, auth):
    body = {"serial": "R58N123ABC", "platform": "android", "person_id": "01a2260d-0000-7000-8000-000000000000"}
    response = client.post("/api/v1/devices", json=body, headers=auth(Role.admin))
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "person_id"


def test_filters_and_cursor_pages(client, auth):
    for i in range(5):
        category = "school_shared" if i % 2 else "school_single_user"
        client.post(
            "/api/v1/devices",
            json={"serial": f"SER{i}", "platform": "ios", "category": category},
            headers=auth(Role.admin),
        )
    shared = client.get("/api/v1/devices?category=school_shared", headers=auth(Role.admin)).json()["items"]
    assert {d["serial"] for d in shared} == {"SER1", "SER3"}
    page = client.get("/api/v1/devices?state=registered&limit=2", headers=auth(Role.admin)).json()
    rest = client.get(
        f"/api/v1/devices?state=registered&limit=10&cursor={page['next_cursor']}", headers=auth(Role.admin)
    ).json()
    assert [d["serial"] for d in page["items"] + rest["items"]] == [f"SER{i}" for i in range(5)]
    assert rest["next_cursor"] is None
    assert client.get("/api/v1/devices?compliance=compliant", headers=auth(Role.admin)).json()["items"] == []
    assert client.get("/api/v1/devices?state=exploded", headers=auth(Role.admin)).status_code == 422
    by_serial = client.get("/api/v1/devices?serial=ser2", headers=auth(Role.admin)).json()["items"]
    assert [d["serial"] for d in by_serial] == ["SER2"]


def test_csv_preregistration_is_all_or_nothing(client, auth):
    _person(client, auth, "UPN1")
    bad = DEVICE_HEADER + (
        "SER1,ipados,iPad,school_single_user,IT-1,UPN1\n"
        "SER2,ipados,iPad,learner_owned,,\n"  # personal category
        "SER3,toaster,,,,\n"  # unknown platform
        "SER4,ios,,,,NOBODY\n"  # unknown person
        "ser1,ipados,iPad,,,\n"  # duplicate serial (case-insensitive)
    )
    response = client.post("/api/v1/devices/import", content=bad, headers={**auth(Role.technician), **CSV})
    assert response.status_code == 422
    fields = {(e["line"], e["field"]) for e in response.json()["errors"]}
    assert {(3, "category"), (4, "platform"), (6, "serial")} <= fields
    assert client.get("/api/v1/devices", headers=auth(Role.admin)).json()["items"] == []

    unknown_person = DEVICE_HEADER + "SER4,ios,,,,NOBODY\n"
    response = client.post("/api/v1/devices/import", content=unknown_person, headers={**auth(Role.admin), **CSV})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "person_external_id"

    good = DEVICE_HEADER + "SER1,ipados,iPad,school_single_user,IT-1,UPN1\nSER2,macos,MacBook Air,school_shared,,\n"
    response = client.post("/api/v1/devices/import", content=good, headers={**auth(Role.technician), **CSV})
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 2
    retag = DEVICE_HEADER + "SER1,ipados,iPad,school_single_user,IT-9,UPN1\nSER2,macos,MacBook Air,school_shared,,\n"
    result = client.post("/api/v1/devices/import", content=retag, headers={**auth(Role.admin), **CSV}).json()
    assert (result["created"], result["updated"], result["unchanged"]) == (0, 1, 1)
    devices = {d["serial"]: d for d in client.get("/api/v1/devices", headers=auth(Role.admin)).json()["items"]}
    assert devices["SER1"]["asset_tag"] == "IT-9"
    assert devices["SER1"]["state"] == "registered"


def test_csv_cannot_change_a_serials_platform(client, auth):
    client.post("/api/v1/devices", json={"serial": "SER1", "platform": "ipados"}, headers=auth(Role.admin))
    body = DEVICE_HEADER + "SER1,android,,,,\n"
    response = client.post("/api/v1/devices/import", content=body, headers={**auth(Role.admin), **CSV})
    assert response.status_code == 422
    assert "registered as ipados" in response.json()["errors"][0]["message"]


def test_access_policy_is_seeded_from_the_policy_table(client, auth):
    items = client.get("/api/v1/access-policy", headers=auth(Role.auditor)).json()["items"]
    assert [(i["category"], i["allowed"], i["network_access"]) for i in items] == [
        ("school_single_user", True, "full"),
        ("school_shared", True, "full"),
        ("authorised", True, "full"),
        ("learner_owned", True, "internet_only"),
        ("staff_owned", True, "internet_only"),
        ("visitor_owned", True, "internet_only"),
    ]


def test_admin_changes_the_access_policy_and_devices_follow(client, auth):
    device = client.post(
        "/api/v1/devices",
        json={"serial": "SER1", "platform": "ios", "category": "school_shared"},
        headers=auth(Role.admin),
    ).json()
    change = {"allowed": True, "network_access": "internet_only", "notes": "Shared iPads: internet only."}
    response = client.put("/api/v1/access-policy/school_shared", json=change, headers=auth(Role.admin))
    assert response.status_code == 200
    assert response.json()["network_access"] == "internet_only"
    assert client.get(f"/api/v1/devices/{device['id']}", headers=auth(Role.admin)).json()["network_access"] == (
        "internet_only"
    )
    client.put(
        "/api/v1/access-policy/school_shared",
        json={"allowed": False, "network_access": "full"},
        headers=auth(Role.admin),
    )
    assert client.get(f"/api/v1/devices/{device['id']}", headers=auth(Role.admin)).json()["network_access"] == "none"
    events = client.get("/api/v1/audit?action=access_policy.update", headers=auth(Role.admin)).json()["items"]
    assert events[-1]["summary"]["network_access"] == {"from": "full", "to": "internet_only"}
    assert client.put("/api/v1/access-policy/teachers_pet", json=change, headers=auth(Role.admin)).status_code == 422
    assert client.put(
        "/api/v1/access-policy/school_shared", json=change, headers=auth(Role.technician)
    ).status_code == (403)


def test_csv_never_turns_a_familys_enrolled_phone_into_school_stock(client, auth):
    from tests.test_channel import Device

    phone = Device(client, auth, category="learner_owned", serial="PHONE1")
    owner = client.get(f"/api/v1/devices/{phone.id}", headers=auth(Role.admin)).json()["person_id"]
    body = DEVICE_HEADER + "PHONE1,ipados,iPhone,school_single_user,IT-66,\n"
    response = client.post("/api/v1/devices/import", content=body, headers={**auth(Role.technician), **CSV})
    assert response.status_code == 422
    error = response.json()["errors"][0]
    assert (error["line"], error["field"]) == (2, "serial")
    assert "personal device (learner_owned)" in error["message"]
    after = client.get(f"/api/v1/devices/{phone.id}", headers=auth(Role.admin)).json()
    assert (after["category"], after["person_id"], after["asset_tag"]) == ("learner_owned", owner, None)
