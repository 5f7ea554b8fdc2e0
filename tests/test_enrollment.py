"""Enrolment: tokens and their QR codes, every refusal with a detail a person can act on, and binding."""

import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography import x509

from mdm.actor import Role
from tests.pki import csr_pem, new_key

IPAD = {"serial": "DMPXK0ABCD12", "platform": "ipados", "model": "iPad (10th gen)", "os_version": "17.5.1"}


def make_token(client, auth, **fields) -> dict:
    body = {"category": "authorised", "expires_in_hours": 72, "max_uses": 1, **fields}
    response = client.post("/api/v1/enrollment-tokens", json=body, headers=auth(Role.technician))
    assert response.status_code == 201, response.text
    return response.json()


def enroll(client, token: str, device: dict | None = None, aup: bool = True, key=None, csr: str | None = None):
    body = {"token": token, "csr": csr or csr_pem(key or new_key()), "aup_accepted": aup, "device": device or IPAD}
    return client.post("/api/v1/enroll", json=body)


def test_token_is_shown_once_with_its_link_and_qr_codes(client, auth):
    token = make_token(client, auth, note="Year 9 iPads")
    assert token["token"].startswith("enr_")
    assert token["enroll_url"].endswith(token["token"])
    assert token["status"] == "active"
    listed = client.get(f"/api/v1/enrollment-tokens/{token['id']}", headers=auth(Role.auditor)).json()
    assert "token" not in listed
    svg = client.get(f"/api/v1/enrollment-tokens/{token['id']}/qr.svg", headers=auth(Role.technician))
    assert svg.status_code == 200
    assert svg.headers["content-type"] == "image/svg+xml"
    assert b"<svg" in svg.content
    png = client.get(f"/api/v1/enrollment-tokens/{token['id']}/qr.png", headers=auth(Role.technician))
    assert png.content.startswith(b"\x89PNG")


def test_qr_code_decodes_to_the_enrolment_link(client, auth):
    segno = pytest.importorskip("segno")
    token = make_token(client, auth)
    svg = client.get(f"/api/v1/enrollment-tokens/{token['id']}/qr.svg", headers=auth(Role.technician)).content
    expected = segno.make(token["enroll_url"], error="m")
    import io

    buffer = io.BytesIO()
    expected.save(buffer, kind="svg", scale=6, border=4, xmldecl=True, title="Enrolment QR code")
    assert svg == buffer.getvalue()  # the same matrix as a QR code of exactly the link


def test_auditor_cannot_print_enrolment_qr_codes(client, auth):
    token = make_token(client, auth)
    assert client.get(f"/api/v1/enrollment-tokens/{token['id']}/qr.png", headers=auth(Role.auditor)).status_code == 403


def test_device_enrols_and_gets_a_certificate_the_ca_vouches_for(client, auth, tmp_path):
    token = make_token(client, auth)
    response = enroll(client, token["token"])
    assert response.status_code == 201, response.text
    body = response.json()
    device_id = body["device_id"]
    assert body["checkin_url"].endswith(f"/api/v1/devices/{device_id}/checkin")
    certificate = x509.load_pem_x509_certificate(body["certificate"].encode())
    assert certificate.subject.rfc4514_string() == f"CN={device_id}"
    (tmp_path / "device.pem").write_text(body["certificate"])
    (tmp_path / "ca.pem").write_text(client.get("/api/v1/pki/ca.pem").text)
    assert body["ca_certificates"] == [client.get("/api/v1/pki/ca.pem").text]
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", tmp_path / "ca.pem", tmp_path / "device.pem"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert "OK" in verified.stdout
    device = client.get(f"/api/v1/devices/{device_id}", headers=auth(Role.admin)).json()
    assert device["state"] == "enrolled"
    assert device["category"] == "authorised"
    assert device["network_access"] == "full"
    assert device["serial"] == "DMPXK0ABCD12"
    used = client.get(f"/api/v1/enrollment-tokens/{token['id']}", headers=auth(Role.admin)).json()
    assert used["uses"] == 1
    assert used["status"] == "used_up"


def test_category_not_allowed_by_the_access_policy_is_403(client, auth):
    client.put(
        "/api/v1/access-policy/visitor_owned",
        json={"allowed": False, "network_access": "none"},
        headers=auth(Role.admin),
    )
    token = make_token(client, auth, category="visitor_owned")
    response = enroll(client, token["token"])
    assert response.status_code == 403
    assert "access policy does not allow visitor owned devices" in response.json()["detail"]


def test_expired_and_revoked_tokens_are_410(client, auth, database):
    from sqlalchemy import text

    expired = make_token(client, auth)
    with database.write_engine.begin() as connection:
        connection.execute(
            text("UPDATE enrollment_token SET expires_at = '2020-01-01 00:00:00' WHERE id = :id"), {"id": expired["id"]}
        )
    response = enroll(client, expired["token"])
    assert response.status_code == 410
    assert "expired" in response.json()["detail"]

    revoked = make_token(client, auth)
    assert client.delete(f"/api/v1/enrollment-tokens/{revoked['id']}", headers=auth(Role.admin)).status_code == 204
    response = enroll(client, revoked["token"])
    assert response.status_code == 410
    assert "revoked" in response.json()["detail"]
    qr = client.get(f"/api/v1/enrollment-tokens/{revoked['id']}/qr.svg", headers=auth(Role.admin))
    assert qr.status_code == 410


def test_used_up_token_is_409_and_unknown_token_401(client, auth):
    token = make_token(client, auth)
    assert enroll(client, token["token"]).status_code == 201
    again = enroll(client, token["token"], device={**IPAD, "serial": "OTHER1"})
    assert again.status_code == 409
    assert "used for all 1 device" in again.json()["detail"]
    assert enroll(client, "enr_made-up").status_code == 401


def test_personal_device_needs_the_acceptable_use_policy(client, auth):
    token = make_token(client, auth, category="learner_owned")
    response = enroll(client, token["token"], aup=False)
    assert response.status_code == 422
    assert "acceptable use policy" in response.json()["detail"]
    assert response.json()["errors"][0]["field"] == "aup_accepted"
    assert enroll(client, token["token"], aup=True).status_code == 201


def test_school_device_needs_no_aup(client, auth):
    token = make_token(client, auth, category="school_shared")
    assert enroll(client, token["token"], aup=False).status_code == 201


@pytest.mark.parametrize(
    ("csr", "words"),
    [
        ("garbage", "not a PEM"),
        ("rsa1024", "1024"),
        ("ed25519", "Ed25519"),
        ("p384", "P-384"),
        ("tampered", "signature"),
    ],
)
def test_bad_csr_is_422_with_the_reason(client, auth, csr, words):
    token = make_token(client, auth)
    if csr == "garbage":
        pem = "-----BEGIN CERTIFICATE REQUEST-----\nnot base64 at all\n-----END CERTIFICATE REQUEST-----\n"
    elif csr == "tampered":
        good = x509.load_pem_x509_csr(csr_pem(new_key()).encode())
        der = bytearray(good.public_bytes(__import__("cryptography").hazmat.primitives.serialization.Encoding.DER))
        der[-5] ^= 0x01  # flip a bit of the signature
        import base64

        pem = (
            "-----BEGIN CERTIFICATE REQUEST-----\n"
            + base64.encodebytes(bytes(der)).decode()
            + ("-----END CERTIFICATE REQUEST-----\n")
        )
    else:
        pem = csr_pem(new_key(csr))
    response = enroll(client, token["token"], csr=pem)
    assert response.status_code == 422, response.text
    assert words in response.json()["detail"]
    token_now = client.get(f"/api/v1/enrollment-tokens/{token['id']}", headers=auth(Role.admin)).json()
    assert token_now["uses"] == 0  # a refused enrolment uses nothing up


def test_rsa_2048_is_accepted(client, auth):
    token = make_token(client, auth)
    assert enroll(client, token["token"], key=new_key("rsa2048")).status_code == 201


def test_preregistered_serial_binds_to_that_device(client, auth):
    person = client.post(
        "/api/v1/people", json={"external_id": "A1", "kind": "learner", "display_name": "Ann"}, headers=auth(Role.admin)
    ).json()
    registered = client.post(
        "/api/v1/devices",
        json={"serial": IPAD["serial"], "platform": "ipados", "asset_tag": "IT-7", "person_id": person["id"]},
        headers=auth(Role.admin),
    ).json()
    token = make_token(client, auth, category="school_single_user")
    enrolled = enroll(client, token["token"], aup=False).json()
    assert enrolled["device_id"] == registered["id"]
    device = client.get(f"/api/v1/devices/{registered['id']}", headers=auth(Role.admin)).json()
    assert device["state"] == "enrolled"
    assert device["asset_tag"] == "IT-7"
    assert device["person_id"] == person["id"]


def test_preregistered_device_refuses_a_token_of_another_category(client, auth):
    client.post(
        "/api/v1/devices",
        json={"serial": IPAD["serial"], "platform": "ipados", "category": "school_shared"},
        headers=auth(Role.admin),
    )
    token = make_token(client, auth, category="school_single_user")
    response = enroll(client, token["token"], aup=False)
    assert response.status_code == 409
    assert "registered as school_shared" in response.json()["detail"]


def test_one_token_enrols_a_cart_of_school_stock(client, auth):
    cart = make_token(client, auth, category="school_shared", max_uses=3)
    serials = ["CART1", "CART2", "CART3", "CART4"]
    statuses = [enroll(client, cart["token"], device={**IPAD, "serial": s}, aup=False).status_code for s in serials]
    assert statuses == [201, 201, 201, 409]
    shared = client.get("/api/v1/devices?category=school_shared", headers=auth(Role.admin)).json()["items"]
    assert sorted(d["serial"] for d in shared) == serials[:3]


def test_concurrent_use_of_a_one_use_token_enrols_exactly_one_device(app, auth, client):
    from fastapi.testclient import TestClient

    token = make_token(client, auth)
    barrier = threading.Barrier(8)

    def attempt(i: int) -> int:
        with TestClient(app) as own_client:
            barrier.wait()
            return enroll(own_client, token["token"], device={**IPAD, "serial": f"RACE{i}"}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(attempt, range(8)))
    assert sorted(results) == [201] + [409] * 7
    devices = client.get("/api/v1/devices", headers=auth(Role.admin)).json()["items"]
    assert len(devices) == 1


def test_token_for_a_person_links_the_device_and_an_unknown_person_is_refused(client, auth):
    person = client.post(
        "/api/v1/people", json={"external_id": "A1", "kind": "learner", "display_name": "Ann"}, headers=auth(Role.admin)
    ).json()
    token = make_token(client, auth, person_id=person["id"])
    device_id = enroll(client, token["token"]).json()["device_id"]
    assert client.get(f"/api/v1/devices/{device_id}", headers=auth(Role.admin)).json()["person_id"] == person["id"]
    refused = client.post(
        "/api/v1/enrollment-tokens", json={"category": "authorised", "person_id": "nobody"}, headers=auth(Role.admin)
    )
    assert refused.status_code == 404


def test_enrolment_is_audited(client, auth):
    token = make_token(client, auth)
    device_id = enroll(client, token["token"]).json()["device_id"]
    events = client.get(f"/api/v1/audit?object_id={device_id}", headers=auth(Role.auditor)).json()["items"]
    assert events[0]["action"] == "device.enroll"
    assert events[0]["actor"] == f"enrolment-token:{token['id']}"
    assert events[0]["summary"]["aup_accepted"] is True


def test_enrolling_with_an_rsa_exponent_3_key_is_422_saying_why(client, auth):
    from cryptography.hazmat.primitives.asymmetric import rsa

    token = client.post(
        "/api/v1/enrollment-tokens", json={"category": "school_single_user"}, headers=auth(Role.admin)
    ).json()
    weak = rsa.generate_private_key(public_exponent=3, key_size=2048)
    body = {"token": token["token"], "csr": csr_pem(weak), "device": {"serial": "E3", "platform": "ipados"}}
    response = client.post("/api/v1/enroll", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "exponent is 3; only 65537" in response.json()["detail"]
