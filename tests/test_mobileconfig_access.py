"""Who may read a profile's `.mobileconfig`, and what they see: the Wi-Fi key is the device's and admins'.

The README promises passwords are never returned: technicians and auditors get the profile without the
key (an iPad installing it asks for the password), the device gets it whole, and an admin gets it whole
with an audit event saying so. A device's request is signed over its path with the query string, as on
the device channel.
"""

import plistlib

import pytest

from mdm.actor import Role
from tests.fleet import WIFI_GUEST, Tablet, create_profile
from tests.pki import signed_headers

SECRET = WIFI_GUEST["password"]


def _plist(signed_profile: bytes) -> dict:
    # The CMS envelope carries the plist verbatim (test_profiles verifies the signature with openssl).
    start, end = signed_profile.index(b"<?xml"), signed_profile.index(b"</plist>") + len(b"</plist>")
    return plistlib.loads(signed_profile[start:end])


def _wifi(document: dict) -> dict:
    return next(p for p in document["PayloadContent"] if p["PayloadType"] == "com.apple.wifi.managed")


def _secret_reads(client, auth) -> list[dict]:
    events = client.get("/api/v1/audit", params={"action": "profile.secret_read"}, headers=auth(Role.auditor))
    return events.json()["items"]


@pytest.fixture
def guest_wifi(client, auth, tmp_path):
    profile = create_profile(client, auth, "uk.sch.example.guest", [WIFI_GUEST])
    tablet = Tablet(client, auth, tmp_path, "T1")
    return tablet, profile, f"/api/v1/devices/{tablet.id}/profiles/{profile['id']}.mobileconfig"


def test_the_device_itself_gets_the_wifi_key(client, auth, guest_wifi):
    tablet, _profile, path = guest_wifi
    key = tablet.agent.state.ensure_key()
    response = client.get(path, headers=signed_headers(key, "GET", path, b""))
    assert response.status_code == 200, response.text
    assert _wifi(_plist(response.content))["Password"] == SECRET
    assert _secret_reads(client, auth) == []


def test_an_admin_gets_the_wifi_key_and_the_audit_log_says_so(client, auth, guest_wifi):
    _tablet, profile, path = guest_wifi
    response = client.get(path, headers=auth(Role.admin))
    assert response.status_code == 200, response.text
    assert _wifi(_plist(response.content))["Password"] == SECRET
    [event] = _secret_reads(client, auth)
    assert (event["object_type"], event["object_id"]) == ("profile", profile["id"])
    assert event["actor"].startswith("token:")
    audit_log = client.get("/api/v1/audit", headers=auth(Role.auditor)).text
    assert SECRET not in audit_log


@pytest.mark.parametrize("role", [Role.technician, Role.auditor])
def test_technicians_and_auditors_get_the_profile_without_the_key(client, auth, guest_wifi, role):
    _tablet, _profile, path = guest_wifi
    response = client.get(path, headers=auth(role))
    assert response.status_code == 200, response.text
    assert SECRET.encode() not in response.content
    wifi = _wifi(_plist(response.content))
    assert "Password" not in wifi
    assert wifi["SSID_STR"] == WIFI_GUEST["ssid"]
    assert _secret_reads(client, auth) == []


def test_the_copy_without_the_key_is_still_a_valid_apple_profile(client, auth, guest_wifi):
    from tests.apple_schema import require_fixtures, validate_profile

    require_fixtures()
    _tablet, _profile, path = guest_wifi
    assert validate_profile(_plist(client.get(path, headers=auth(Role.technician)).content)) == []


def test_an_admin_download_of_a_profile_without_secrets_is_not_a_secret_read(client, auth, tmp_path):
    profile = create_profile(client, auth, "uk.sch.example.passcode", [{"type": "passcode"}])
    tablet = Tablet(client, auth, tmp_path, "T1")
    path = f"/api/v1/devices/{tablet.id}/profiles/{profile['id']}.mobileconfig"
    assert client.get(path, headers=auth(Role.admin)).status_code == 200
    assert _secret_reads(client, auth) == []


def test_integrations_still_cannot_read_profiles(client, auth, guest_wifi):
    _tablet, _profile, path = guest_wifi
    assert client.get(path, headers=auth(Role.integration)).status_code == 403


# --- The device's signature covers the query string ---------------------------------------------------


def test_a_signature_over_the_path_alone_does_not_cover_an_added_query(client, auth, guest_wifi):
    tablet, _profile, path = guest_wifi
    key = tablet.agent.state.ensure_key()
    response = client.get(f"{path}?format=anything", headers=signed_headers(key, "GET", path, b""))
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"


def test_a_signature_over_the_path_and_query_is_accepted(client, auth, guest_wifi):
    tablet, _profile, path = guest_wifi
    key = tablet.agent.state.ensure_key()
    with_query = f"{path}?v=1"
    response = client.get(with_query, headers=signed_headers(key, "GET", with_query, b""))
    assert response.status_code == 200, response.text
