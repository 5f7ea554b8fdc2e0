"""Bad input is a 422 problem, never a 500: numbers, cursors, dates, nulls and NUL bytes an attacker chose.

Several of these only broke on PostgreSQL (int4 columns, text that cannot hold NUL, JSONB), so every test
runs on both databases through the `client` fixture.
"""

import base64
import json

import pytest

from mdm.actor import Role
from tests.test_channel import INVENTORY, Device

PROBLEM = "application/problem+json"


def _is_problem(response, status: int = 422) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    return response.json()


def _fields(problem: dict) -> list[str]:
    return [error.get("field") for error in problem.get("errors", [])]


# --- Numbers beyond what the columns hold -----------------------------------------------------------


@pytest.mark.parametrize("version", [2**63, 2**31, -1])
def test_a_checkin_with_an_impossible_profile_version_is_422(client, auth, version):
    device = Device(client, auth)
    inventory = {**INVENTORY, "profiles": [{"identifier": "uk.sch.example.wifi", "version": version}]}
    problem = _is_problem(device.checkin(inventory))
    assert "inventory.profiles.0.version" in _fields(problem)
    # Nothing was stored: the device's last good report still stands.
    assert device.checkin().status_code == 200


def test_a_checkin_with_an_os_version_longer_than_the_device_record_holds_is_422(client, auth):
    """It was a 500 on PostgreSQL, whose column holds 50 characters, when the check-in wrote the device row."""
    device = Device(client, auth)
    problem = _is_problem(device.checkin({**INVENTORY, "os_version": "17." + "9" * 60}))
    assert "inventory.os_version" in _fields(problem)
    shown = client.get(f"/api/v1/devices/{device.id}", headers=auth(Role.admin)).json()
    assert shown["os_version"] != "17." + "9" * 60
    assert device.checkin({**INVENTORY, "os_version": "17.6"}).status_code == 200


# --- Cursors ----------------------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


BAD_CURSORS = [_b64("²"), _b64("--5"), _b64("9" * 40), "9" * 40, "--5", "%%", _b64("\x00"), _b64("12\x00")]
LIST_ROUTES = [
    "/api/v1/audit",
    "/api/v1/people",
    "/api/v1/devices",
    "/api/v1/enrollment-tokens",
    "/api/v1/exits",
    "/api/v1/webhooks",
    "/api/v1/os-releases",
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_a_malformed_audit_cursor_is_422_naming_the_cursor(client, auth, cursor):
    response = client.get("/api/v1/audit", params={"cursor": cursor}, headers=auth(Role.auditor))
    problem = _is_problem(response)
    assert "cursor" in problem["detail"]


def test_every_list_route_refuses_malformed_cursors(client, auth):
    device = Device(client, auth)
    hook = client.post(
        "/api/v1/webhooks",
        json={"url": "https://hooks.example/x", "events": ["device.enrolled"]},
        headers=auth(Role.admin),
    )
    routes = [*LIST_ROUTES, f"/api/v1/devices/{device.id}/commands"]
    if hook.status_code == 201:
        routes.append(f"/api/v1/webhooks/{hook.json()['id']}/deliveries")
    for route in routes:
        for cursor in BAD_CURSORS:
            response = client.get(route, params={"cursor": cursor}, headers=auth(Role.admin))
            assert response.status_code == 422, (route, cursor, response.text)
            assert response.headers["content-type"] == PROBLEM


def test_a_good_audit_cursor_still_pages(client, auth):
    for name in ("a", "b", "c"):
        client.post(
            "/api/v1/people",
            json={"external_id": name, "kind": "staff", "display_name": name},
            headers=auth(Role.admin),
        )
    first = client.get("/api/v1/audit", params={"limit": 2}, headers=auth(Role.auditor)).json()
    second = client.get(
        "/api/v1/audit", params={"limit": 2, "cursor": first["next_cursor"]}, headers=auth(Role.auditor)
    )
    assert second.status_code == 200
    assert {e["seq"] for e in first["items"]}.isdisjoint(e["seq"] for e in second.json()["items"])


# --- Dates that cannot be expressed in UTC ----------------------------------------------------------

FAR_FUTURE = "9999-12-31T23:59:59-14:00"
FAR_PAST = "0001-01-01T00:00:00+14:00"


@pytest.mark.parametrize("when", [FAR_FUTURE, FAR_PAST])
def test_an_os_release_dated_beyond_utc_is_422(client, auth, when):
    document = {"releases": [{"platform": "ios", "version": "17.5.1", "released_at": when}]}
    problem = _is_problem(client.post("/api/v1/os-releases", json=document, headers=auth(Role.admin)))
    assert any("released_at" in field for field in _fields(problem)), problem
    assert client.get("/api/v1/os-releases", headers=auth(Role.admin)).json()["items"] == []


def test_an_os_release_file_dated_beyond_utc_is_refused_naming_the_entry(database, tmp_path):
    """`mdm os-releases load FILE` reads the file through this function and prints the refusal."""
    from compliance.os_releases.service import load_file
    from mdm.errors import ProblemError

    path = tmp_path / "releases.json"
    path.write_text(json.dumps([{"platform": "ios", "version": "17.5.1", "released_at": FAR_FUTURE}]))
    with pytest.raises(ProblemError) as refused, database.writing() as session:
        load_file(session, path)
    assert refused.value.status == 422
    assert "releases[0].released_at" in str(refused.value.extra["errors"])


@pytest.mark.parametrize("when", [FAR_FUTURE, FAR_PAST])
def test_an_audit_filter_date_beyond_utc_is_422(client, auth, when):
    response = client.get("/api/v1/audit", params={"since": when}, headers=auth(Role.auditor))
    assert "query.since" in _fields(_is_problem(response))


def test_a_device_reporting_an_impossible_definitions_date_is_422(client, auth):
    device = Device(client, auth)
    inventory = {**INVENTORY, "malware_protection": {"enabled": True, "definitions_updated_at": FAR_FUTURE}}
    problem = _is_problem(device.checkin(inventory))
    assert "inventory.malware_protection.definitions_updated_at" in _fields(problem)


# --- null for a field that cannot be empty ----------------------------------------------------------


def _app(client, auth) -> dict:
    body = {"identifier": "com.example.maths", "name": "Maths", "platform": "ios", "licence": "school"}
    created = client.post("/api/v1/apps", json={**body, "licences_total": 30}, headers=auth(Role.admin))
    assert created.status_code == 201, created.text
    return created.json()


@pytest.mark.parametrize("field", ["name", "licences_total", "required_for", "required_groups"])
def test_put_app_with_null_for_a_required_field_is_422(client, auth, field):
    app = _app(client, auth)
    response = client.put(f"/api/v1/apps/{app['id']}", json={field: None}, headers=auth(Role.admin))
    assert f"body.{field}" in _fields(_is_problem(response))
    after = client.get(f"/api/v1/apps/{app['id']}", headers=auth(Role.admin)).json()
    assert (after["name"], after["licences_total"]) == ("Maths", 30)


def test_put_app_may_still_clear_what_is_optional(client, auth):
    app = _app(client, auth)
    response = client.put(
        f"/api/v1/apps/{app['id']}", json={"min_version": None, "age_rating": None}, headers=auth(Role.admin)
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("field", ["name", "payloads", "scope"])
def test_put_profile_with_null_is_422_not_a_silent_no_op(client, auth, field):
    body = {"name": "Proxy", "identifier": "uk.sch.example.proxy", "payloads": [{"type": "passcode"}]}
    profile = client.post("/api/v1/profiles", json=body, headers=auth(Role.admin)).json()
    response = client.put(f"/api/v1/profiles/{profile['id']}", json={field: None}, headers=auth(Role.admin))
    assert f"body.{field}" in _fields(_is_problem(response))
    assert client.get(f"/api/v1/profiles/{profile['id']}", headers=auth(Role.admin)).json()["version"] == 1


@pytest.mark.parametrize("field", ["enabled", "params"])
def test_put_compliance_rule_with_null_is_422(client, auth, field):
    rules = client.get("/api/v1/compliance/rules", headers=auth(Role.admin)).json()["items"]
    response = client.put(f"/api/v1/compliance/rules/{rules[0]['id']}", json={field: None}, headers=auth(Role.admin))
    assert f"body.{field}" in _fields(_is_problem(response))


# --- NUL bytes --------------------------------------------------------------------------------------

NUL = "Ann\x00Smith"
CSV = {"content-type": "text/csv"}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/people", {"external_id": "A1", "kind": "learner", "display_name": NUL}, "body.display_name"),
        ("/api/v1/people", {"external_id": NUL, "kind": "learner", "display_name": "Ann"}, "body.external_id"),
        (
            "/api/v1/people",
            {"external_id": "A1", "kind": "learner", "display_name": "A", "groups": [NUL]},
            "body.groups",
        ),
        ("/api/v1/enrollment-tokens", {"category": "learner_owned", "person_id": NUL}, "body.person_id"),
        ("/api/v1/devices", {"serial": "S1", "platform": "ipados", "asset_tag": NUL}, "body.asset_tag"),
        ("/api/v1/devices", {"serial": "S1", "platform": "ipados", "model": NUL}, "body.model"),
        ("/api/v1/profiles", {"name": NUL, "identifier": "uk.sch.x", "payloads": [{"type": "passcode"}]}, "body.name"),
        ("/api/v1/tokens", {"name": NUL, "role": "auditor"}, "body.name"),
    ],
)
def test_nul_in_a_name_is_422_naming_the_field(client, auth, path, body, field):
    response = client.post(path, json=body, headers=auth(Role.admin))
    problem = _is_problem(response)
    assert any(f.startswith(field) for f in _fields(problem)), problem
    assert "NUL" in json.dumps(problem)


def test_nul_in_an_enrolling_devices_name_is_422(client, auth):
    from tests.pki import csr_pem, new_key

    token = client.post(
        "/api/v1/enrollment-tokens", json={"category": "school_single_user"}, headers=auth(Role.admin)
    ).json()
    body = {
        "token": token["token"],
        "csr": csr_pem(new_key()),
        "device": {"serial": "S1", "platform": "ipados", "name": NUL},
    }
    problem = _is_problem(client.post("/api/v1/enroll", json=body))
    assert "body.device.name" in _fields(problem)


@pytest.mark.parametrize(
    ("path", "csv"),
    [
        ("/api/v1/people/import", f"external_id,kind,display_name\nA1,learner,Ann\nA2,learner,{NUL}\n"),
        ("/api/v1/devices/import", f"serial,platform,asset_tag\nS1,ipados,T1\nS2,ipados,{NUL}\n"),
    ],
)
def test_nul_in_a_csv_cell_is_422_naming_the_line(client, auth, path, csv):
    response = client.post(path, content=csv.encode(), headers={**auth(Role.admin), **CSV})
    problem = _is_problem(response)
    assert [error["line"] for error in problem["errors"]] == [3]
    assert client.get(path.removesuffix("/import"), headers=auth(Role.admin)).json()["items"] == []


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/people?external_id=A%00",
        "/api/v1/audit?actor=x%00",
        "/api/v1/os-releases?os_line=1%00",
        "/api/v1/devices/%00",
        "/api/v1/people/a%00b",
    ],
)
def test_nul_in_the_address_is_refused_before_the_database(client, auth, path):
    _is_problem(client.get(path, headers=auth(Role.admin)), 400)


def test_nul_in_a_devices_own_inventory_is_dropped_not_fatal(client, auth):
    """A device must keep checking in (to be locked, or offboarded) even if its agent reports junk."""
    device = Device(client, auth)
    inventory = {
        **INVENTORY,
        "os_version": "17.5\x00.1",
        "apps": [{"identifier": "com.example\x00.maths", "version": "2\x00.1", "managed": True}],
        "profiles": [{"identifier": "uk.sch.example.wifi\x00", "version": 1}],
    }
    response = device.checkin(inventory)
    assert response.status_code == 200, response.text
    seen = client.get(f"/api/v1/devices/{device.id}", headers=auth(Role.admin)).json()
    assert seen["os_version"] == "17.5.1"


def test_every_request_body_refuses_nul(app):
    """A body model added later without the shared `Input` base would let NULs through to the database."""
    from fastapi.routing import APIRoute

    from compliance.os_releases.models import OsReleaseDocument
    from mdm.validation import Input
    from tests.test_roles import _all_routes

    bodies = {
        (route.path, param.name): param.field_info.annotation
        for route in _all_routes(app.routes)
        if isinstance(route, APIRoute)
        for param in route.dependant.body_params
    }
    assert bodies, "the walk found no request bodies"
    # POST /os-releases takes any JSON and validates it as an OsReleaseDocument, for the file and the API alike.
    assert issubclass(OsReleaseDocument, Input)
    loose = {key: model for key, model in bodies.items() if key[0] != "/api/v1/os-releases"}
    assert [key for key, model in loose.items() if not (isinstance(model, type) and issubclass(model, Input))] == []


def test_a_rule_parameter_too_large_for_date_arithmetic_is_422(client, auth):
    """A count of days beyond year 1 would make every nightly run fail computing now - days."""
    body = {"params": {"max_definitions_age_days": 10**6}}
    response = client.put("/api/v1/compliance/rules/malware_protection", json=body, headers=auth(Role.admin))
    assert "params.max_definitions_age_days" in _fields(_is_problem(response))
