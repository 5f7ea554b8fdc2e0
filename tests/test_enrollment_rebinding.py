"""A serial is printed on the box: enrolling with it must never take a school's device away from it.

Binding to a device the service knows needs a token for the device's own category and person; a held
or leaving device is never touched; and the device's old identity keeps working until the new one has
proven itself by signing a request.
"""

import json

from cryptography import x509

from mdm.actor import Role
from tests.pki import csr_pem, new_key, openssl_crl_verdict, signed_headers

SERIAL = "DMPXK0VICTIM"
INVENTORY = {"os_version": "17.5.1", "apps": [], "profiles": []}


def person(client, auth, external_id: str) -> str:
    body = {"external_id": external_id, "kind": "learner", "display_name": external_id}
    return client.post("/api/v1/people", json=body, headers=auth(Role.admin)).json()["id"]


def token(client, auth, category: str, person_id: str | None = None, max_uses: int = 1) -> dict:
    body = {"category": category, "person_id": person_id, "max_uses": max_uses}
    response = client.post("/api/v1/enrollment-tokens", json=body, headers=auth(Role.technician))
    assert response.status_code == 201, response.text
    return response.json()


def enroll(client, secret: str, key, platform: str = "ipados"):
    body = {
        "token": secret,
        "csr": csr_pem(key),
        "aup_accepted": True,
        "device": {"serial": SERIAL, "platform": platform},
    }
    return client.post("/api/v1/enroll", json=body)


def checkin(client, device_id: str, key):
    path = f"/api/v1/devices/{device_id}/checkin"
    body = json.dumps({"inventory": INVENTORY}).encode()
    return client.post(path, content=body, headers=signed_headers(key, "POST", path, body))


def device(client, auth, device_id: str) -> dict:
    return client.get(f"/api/v1/devices/{device_id}", headers=auth(Role.admin)).json()


def crl_lists(client, certificate_pem: str) -> bool:
    crl = x509.load_der_x509_crl(client.get("/api/v1/pki/crl").content)
    serial = x509.load_pem_x509_certificate(certificate_pem.encode()).serial_number
    return crl.get_revoked_certificate_by_serial_number(serial) is not None


def enrolled_school_ipad(client, auth) -> tuple[dict, object, str]:
    learner = person(client, auth, "L1")
    key = new_key()
    enrolled = enroll(client, token(client, auth, "school_single_user", learner)["token"], key)
    assert enrolled.status_code == 201, enrolled.text
    return enrolled.json(), key, learner


def assert_untouched(client, auth, victim: dict, key, learner: str) -> None:
    after = device(client, auth, victim["device_id"])
    assert (after["category"], after["person_id"], after["state"]) == ("school_single_user", learner, "enrolled")
    assert not crl_lists(client, victim["certificate"])
    assert checkin(client, victim["device_id"], key).status_code == 200


def test_a_token_of_another_category_cannot_take_an_enrolled_device_by_its_serial(client, auth):
    victim, key, learner = enrolled_school_ipad(client, auth)
    visitor = token(client, auth, "visitor_owned")
    attack = enroll(client, visitor["token"], new_key())
    assert attack.status_code == 409
    assert attack.headers["content-type"] == "application/problem+json"
    assert "school_single_user" in attack.json()["detail"]
    assert_untouched(client, auth, victim, key, learner)
    unused = client.get(f"/api/v1/enrollment-tokens/{visitor['id']}", headers=auth(Role.admin)).json()
    assert unused["uses"] == 0


def test_a_token_for_another_person_or_for_nobody_cannot_take_it_either(client, auth):
    victim, key, learner = enrolled_school_ipad(client, auth)
    someone_else = person(client, auth, "L2")
    for secret in (
        token(client, auth, "school_single_user", someone_else)["token"],
        token(client, auth, "school_single_user")["token"],
    ):
        refused = enroll(client, secret, new_key())
        assert refused.status_code == 409, refused.text
        assert "person" in refused.json()["detail"]
    assert_untouched(client, auth, victim, key, learner)


def test_a_held_device_is_never_enrolled_again_even_with_the_right_token(client, auth):
    victim, key, learner = enrolled_school_ipad(client, auth)
    held = client.put(
        f"/api/v1/devices/{victim['device_id']}/hold",
        json={"held": True, "reason": "confiscated"},
        headers=auth(Role.technician),
    )
    assert held.status_code == 200, held.text
    refused = enroll(client, token(client, auth, "school_single_user", learner)["token"], new_key())
    assert refused.status_code == 409
    assert "held" in refused.json()["detail"]
    assert checkin(client, victim["device_id"], key).status_code == 200


def test_the_old_identity_works_until_the_new_one_signs_then_it_is_revoked(client, auth, tmp_path):
    cart = token(client, auth, "school_shared", max_uses=2)
    old_key, new_key_ = new_key(), new_key()
    first = enroll(client, cart["token"], old_key).json()
    second = enroll(client, cart["token"], new_key_).json()
    assert second["device_id"] == first["device_id"]
    device_id = first["device_id"]

    assert checkin(client, device_id, old_key).status_code == 200
    assert not crl_lists(client, first["certificate"])

    assert checkin(client, device_id, new_key_).status_code == 200
    refused = checkin(client, device_id, old_key)
    assert refused.status_code == 403
    assert "revoked" in refused.json()["detail"]
    ca_pem = client.get("/api/v1/pki/ca.pem").text
    crl = client.get("/api/v1/pki/crl").content
    assert "certificate revoked" in openssl_crl_verdict(tmp_path, first["certificate"], ca_pem, crl)
    assert "OK" in openssl_crl_verdict(tmp_path, second["certificate"], ca_pem, crl)
    events = client.get(f"/api/v1/audit?object_id={device_id}", headers=auth(Role.auditor)).json()["items"]
    assert events[0]["action"] == "device.identity_confirmed"
    assert checkin(client, device_id, new_key_).status_code == 200
    later = client.get(f"/api/v1/audit?object_id={device_id}", headers=auth(Role.auditor)).json()["items"]
    assert [e["action"] for e in later].count("device.identity_confirmed") == 1


def test_a_stranger_who_reenrols_a_cart_ipad_cannot_cut_off_the_real_one_before_signing(client, auth):
    cart = token(client, auth, "school_shared", max_uses=2)
    real_key = new_key()
    real = enroll(client, cart["token"], real_key).json()
    enroll(client, cart["token"], new_key())  # never checks in
    for _ in range(2):
        assert checkin(client, real["device_id"], real_key).status_code == 200
