"""The Apple enrolment profile: what an iPad installs from the QR code's link to join the school's MDM.

Checked the way a device would: the signature by `openssl cms -verify` against the school CA, every
key against Apple's published schemas (shared/fixtures, skipped without them), and the SCEP payload's
Challenge by using it with our SCEP client. Refusals follow `POST /api/v1/enroll`, and a download
uses nothing up.
"""

import plistlib
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from mdm.actor import Role
from mdm.channel.apple.models import ApplePushCertificate
from mdm.ids import utcnow
from mdm.settings import Settings
from tests.apple_schema import require_fixtures, validate_profile
from tests.scep_client import pkcs_req, read_cert_rep, recipients_from_ca_cert

TOPIC = "com.apple.mgmt.External.5f1d0c3e-8a4b-4c2d-9e7f-0123456789ab"
# Apple's schema insists on https:// for the MDM URLs, as devices do; production sits behind TLS.
PUBLIC_URL = "https://mdm.example-school.org"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, scheduler="off", public_url=PUBLIC_URL)


def make_token(client, auth, **fields) -> dict:
    body = {"category": "school_shared", "expires_in_hours": 72, "max_uses": 30, **fields}
    response = client.post("/api/v1/enrollment-tokens", json=body, headers=auth(Role.technician))
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def push_certificate(database) -> str:
    now = utcnow()
    with database.writing() as session:
        session.add(
            ApplePushCertificate(
                topic=TOPIC,
                certificate_pem="(not read by the enrolment profile)",
                key_sealed="(not read by the enrolment profile)",
                not_after=now + timedelta(days=365),
                loaded_at=now,
                loaded_by="cli:test",
            )
        )
    return TOPIC


def verified_plist(client, body: bytes, tmp_path: Path) -> dict:
    """The profile's content, once openssl has checked it is signed by a certificate from the school CA."""
    (tmp_path / "ca.pem").write_bytes(client.get("/api/v1/pki/ca.pem").content)
    (tmp_path / "profile.der").write_bytes(body)
    command = ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-CAfile", "ca.pem", "-in", "profile.der"]
    result = subprocess.run([*command, "-out", "profile.plist"], cwd=tmp_path, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
    return plistlib.loads((tmp_path / "profile.plist").read_bytes())


def payload(profile: dict, payload_type: str) -> dict:
    [found] = [p for p in profile["PayloadContent"] if p["PayloadType"] == payload_type]
    return found


def test_staff_get_a_signed_schema_valid_profile_that_carries_the_token(client, auth, push_certificate, tmp_path):
    token = make_token(client, auth)
    response = client.get(f"/api/v1/enrollment-tokens/{token['id']}/enroll.mobileconfig", headers=auth(Role.technician))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-apple-aspen-config"

    profile = verified_plist(client, response.content, tmp_path)
    require_fixtures()
    assert validate_profile(profile) == []
    scep = payload(profile, "com.apple.security.scep")
    mdm = payload(profile, "com.apple.mdm")
    base = PUBLIC_URL
    assert scep["PayloadContent"]["Challenge"] == token["token"]
    assert scep["PayloadContent"]["URL"] == f"{base}/scep"
    assert scep["PayloadContent"]["Keysize"] == 2048
    assert scep["PayloadContent"]["Key Type"] == "RSA"
    assert scep["PayloadContent"]["Subject"][0][0][0] == "CN"
    assert mdm["IdentityCertificateUUID"] == scep["PayloadUUID"]
    assert mdm["Topic"] == push_certificate
    assert (mdm["ServerURL"], mdm["CheckInURL"]) == (f"{base}/mdm/connect", f"{base}/mdm/checkin")
    assert mdm["SignMessage"] is True
    assert mdm["CheckOutWhenRemoved"] is True
    assert mdm["AccessRights"] == 8191


def test_a_devices_browser_gets_the_same_profile_and_the_download_uses_nothing(
    client, auth, push_certificate, tmp_path
):
    token = make_token(client, auth, max_uses=1)
    staff = client.get(f"/api/v1/enrollment-tokens/{token['id']}/enroll.mobileconfig", headers=auth(Role.admin))
    device = client.get(f"/enroll/{token['token']}.mobileconfig")
    assert device.status_code == 200
    assert device.headers["content-type"] == "application/x-apple-aspen-config"
    assert verified_plist(client, device.content, tmp_path) == verified_plist(client, staff.content, tmp_path)
    assert client.get(f"/enroll/{token['token']}.mobileconfig").status_code == 200
    shown = client.get(f"/api/v1/enrollment-tokens/{token['id']}", headers=auth(Role.admin)).json()
    assert (shown["uses"], shown["status"]) == (0, "active")


def test_the_profiles_challenge_enrols_with_the_scep_server(client, auth, push_certificate, tmp_path):
    token = make_token(client, auth, max_uses=1)
    profile = verified_plist(client, client.get(f"/enroll/{token['token']}.mobileconfig").content, tmp_path)
    challenge = payload(profile, "com.apple.security.scep")["PayloadContent"]["Challenge"]
    ca_cert = client.get("/scep", params={"operation": "GetCACert"})
    request = pkcs_req(recipients_from_ca_cert(ca_cert.content, ca_cert.headers["content-type"]), challenge)
    response = client.post("/scep?operation=PKIOperation", content=request.der)
    from cryptography import x509

    ca = x509.load_pem_x509_certificate(client.get("/api/v1/pki/ca.pem").content)
    assert read_cert_rep(response.content, request, ca).status == "0"
    # Used up now: the profile is refused like the token.
    assert client.get(f"/enroll/{token['token']}.mobileconfig").status_code == 409


def test_a_personal_devices_profile_says_installing_it_accepts_the_aup(client, auth, push_certificate, tmp_path):
    token = make_token(client, auth, category="authorised", max_uses=1)
    profile = verified_plist(client, client.get(f"/enroll/{token['token']}.mobileconfig").content, tmp_path)
    assert "acceptable use policy" in profile["PayloadDescription"]
    shared = make_token(client, auth)
    profile = verified_plist(client, client.get(f"/enroll/{shared['token']}.mobileconfig").content, tmp_path)
    assert "acceptable use policy" not in profile["PayloadDescription"]


def test_without_a_push_certificate_the_profile_is_409_saying_what_to_run(client, auth):
    token = make_token(client, auth)
    for response in (
        client.get(f"/api/v1/enrollment-tokens/{token['id']}/enroll.mobileconfig", headers=auth(Role.admin)),
        client.get(f"/enroll/{token['token']}.mobileconfig"),
    ):
        assert response.status_code == 409
        assert response.headers["content-type"] == "application/problem+json"
        assert "mdm apple push-cert load" in response.json()["detail"]


def test_refusals_follow_enrolment(client, auth, database, push_certificate):
    unknown = client.get("/enroll/enr_made-up.mobileconfig")
    assert unknown.status_code == 404
    assert "enr_made-up" not in unknown.text

    expired = make_token(client, auth)
    with database.write_engine.begin() as connection:
        connection.execute(
            text("UPDATE enrollment_token SET expires_at = '2020-01-01 00:00:00' WHERE id = :id"), {"id": expired["id"]}
        )
    revoked = make_token(client, auth)
    assert client.delete(f"/api/v1/enrollment-tokens/{revoked['id']}", headers=auth(Role.admin)).status_code == 204
    used_up = make_token(client, auth, max_uses=1)
    with database.write_engine.begin() as connection:
        connection.execute(text("UPDATE enrollment_token SET uses = 1 WHERE id = :id"), {"id": used_up["id"]})

    for token, status, words in ((expired, 410, "expired"), (revoked, 410, "revoked"), (used_up, 409, "used for all")):
        by_link = client.get(f"/enroll/{token['token']}.mobileconfig")
        by_id = client.get(f"/api/v1/enrollment-tokens/{token['id']}/enroll.mobileconfig", headers=auth(Role.admin))
        for response in (by_link, by_id):
            assert response.status_code == status, (token, response.text)
            assert words in response.json()["detail"]


def test_only_staff_download_a_tokens_profile(client, auth, push_certificate):
    token = make_token(client, auth)
    path = f"/api/v1/enrollment-tokens/{token['id']}/enroll.mobileconfig"
    assert client.get(path, headers=auth(Role.auditor)).status_code == 403
    assert client.get(path).status_code == 401
    unknown = client.get("/api/v1/enrollment-tokens/00000000-0000-4000-8000-000000000000/enroll.mobileconfig")
    assert unknown.status_code == 401
