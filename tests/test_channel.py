"""The device channel: who may speak for a device, and the command queue it serves."""

import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from cryptography import x509
from fastapi.testclient import TestClient

from mdm.actor import Role
from tests.pki import csr_pem, new_key, signed_headers

INVENTORY = {
    "os_version": "17.5.1",
    "build": "21F90",
    "passcode_set": True,
    "encrypted": True,
    "jailbroken": False,
    "malware_protection": None,
    "apps": [
        {"identifier": "com.example.maths", "version": "2.1", "managed": True},
        {"identifier": "com.family.game", "version": "1.0", "managed": False},
    ],
    "profiles": [{"identifier": "uk.sch.example.wifi", "version": 1}],
}


class Device:
    """A device as the server sees it: an enrolled key and signed requests."""

    def __init__(
        self, client: TestClient, auth, category: str = "school_single_user", key_kind: str = "ec", serial: str = "SER1"
    ):
        self.client = client
        self.key = new_key(key_kind)
        token = client.post("/api/v1/enrollment-tokens", json={"category": category}, headers=auth(Role.admin)).json()
        body = {
            "token": token["token"],
            "csr": csr_pem(self.key),
            "aup_accepted": True,
            "device": {"serial": serial, "platform": "ipados"},
        }
        enrolled = client.post("/api/v1/enroll", json=body)
        assert enrolled.status_code == 201, enrolled.text
        self.id = enrolled.json()["device_id"]
        self.certificate = enrolled.json()["certificate"]

    def post(self, path: str, document: dict, key=None, **signing):
        body = json.dumps(document).encode()
        headers = signed_headers(key or self.key, "POST", path, body, **signing)
        return self.client.post(path, content=body, headers=headers)

    def checkin(self, inventory: dict | None = None, **signing):
        return self.post(f"/api/v1/devices/{self.id}/checkin", {"inventory": inventory or INVENTORY}, **signing)

    def answer(self, command_id: str, status: str = "acknowledged", detail: str | None = None, device_id=None):
        path = f"/api/v1/devices/{device_id or self.id}/commands/{command_id}/result"
        return self.post(path, {"status": status, "detail": detail})


def lock(client, auth, device_id: str, message: str = "Please return this iPad to IT") -> dict:
    response = client.post(
        f"/api/v1/devices/{device_id}/commands",
        json={"type": "DeviceLock", "message": message},
        headers=auth(Role.technician),
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_checkin_stores_inventory_and_delivers_commands(client, auth):
    device = Device(client, auth)
    command = lock(client, auth, device.id)
    response = device.checkin()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next_checkin_seconds"] == 14400
    assert body["commands"] == [
        {"id": command["id"], "type": "DeviceLock", "payload": {"message": "Please return this iPad to IT"}}
    ]
    seen = client.get(f"/api/v1/devices/{device.id}", headers=auth(Role.admin)).json()
    assert seen["last_checkin_at"] is not None
    assert seen["os_version"] == "17.5.1"
    assert device.answer(command["id"]).status_code == 204
    history = client.get(f"/api/v1/devices/{device.id}/commands", headers=auth(Role.auditor)).json()["items"]
    assert [(c["type"], c["status"]) for c in history] == [("DeviceLock", "acknowledged")]
    assert device.checkin().json()["commands"] == []


def test_rsa_device_checks_in(client, auth):
    device = Device(client, auth, key_kind="rsa2048")
    assert device.checkin().status_code == 200


def test_forged_signature_is_401(client, auth):
    device = Device(client, auth)
    forged = device.checkin(key=new_key())
    assert forged.status_code == 401
    assert forged.headers["content-type"] == "application/problem+json"
    path = f"/api/v1/devices/{device.id}/checkin"
    body = json.dumps({"inventory": INVENTORY}).encode()
    headers = signed_headers(device.key, "POST", path, body)
    tampered = client.post(path, content=body.replace(b"17.5.1", b"99.0.0"), headers=headers)
    assert tampered.status_code == 401


def test_replayed_nonce_is_401(client, auth):
    device = Device(client, auth)
    path = f"/api/v1/devices/{device.id}/checkin"
    body = json.dumps({"inventory": INVENTORY}).encode()
    headers = signed_headers(device.key, "POST", path, body)
    assert client.post(path, content=body, headers=headers).status_code == 200
    replay = client.post(path, content=body, headers=headers)
    assert replay.status_code == 401
    assert "replay" in replay.json()["detail"]


def test_stale_and_future_timestamps_are_401(client, auth):
    device = Device(client, auth)
    # Each timestamp is taken just before its request, with a few seconds' margin: a loaded CI machine
    # may take a second between two requests, which would bring "301 s ahead" inside the window.
    assert device.checkin(timestamp=int(time.time()) - 305).status_code == 401
    assert device.checkin(timestamp=int(time.time()) + 305).status_code == 401
    assert device.checkin(timestamp=int(time.time()) - 290).status_code == 200


def test_missing_headers_and_bad_nonces_are_401(client, auth):
    device = Device(client, auth)
    bare = client.post(f"/api/v1/devices/{device.id}/checkin", json={"inventory": INVENTORY})
    assert bare.status_code == 401
    assert "X-MDM-Signature" in bare.json()["detail"]
    assert device.checkin(nonce="short").status_code == 401


def test_device_a_can_neither_read_nor_answer_device_b_commands(client, auth):
    device_a = Device(client, auth, serial="A")
    device_b = Device(client, auth, serial="B")
    command_b = lock(client, auth, device_b.id)
    # A signs a check-in for B's id with its own key: refused, and B's command is untouched.
    path = f"/api/v1/devices/{device_b.id}/checkin"
    body = json.dumps({"inventory": INVENTORY}).encode()
    assert client.post(path, content=body, headers=signed_headers(device_a.key, "POST", path, body)).status_code == 401
    # A answers B's command through its own, correctly signed, channel: unknown to A.
    assert device_a.answer(command_b["id"]).status_code == 404
    assert device_a.checkin().json()["commands"] == []
    delivered = device_b.checkin().json()["commands"]
    assert [c["id"] for c in delivered] == [command_b["id"]]


def test_revoked_device_is_shut_out_and_listed_in_the_crl(client, auth, tmp_path):
    device = Device(client, auth)
    assert device.checkin().status_code == 200
    (tmp_path / "ca.pem").write_text(client.get("/api/v1/pki/ca.pem").text)
    (tmp_path / "device.pem").write_text(device.certificate)
    crl_before = client.get("/api/v1/pki/crl")
    assert crl_before.headers["content-type"] == "application/pkix-crl"
    revoked = client.post(f"/api/v1/devices/{device.id}/revoke", json={"reason": "lost"}, headers=auth(Role.admin))
    assert revoked.status_code == 200, revoked.text
    crl_der = client.get("/api/v1/pki/crl").content
    (tmp_path / "crl.der").write_bytes(crl_der)
    subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", tmp_path / "crl.der", "-out", tmp_path / "crl.pem"], check=True
    )
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-crl_check",
            "-CRLfile",
            tmp_path / "crl.pem",
            "-CAfile",
            tmp_path / "ca.pem",
            tmp_path / "device.pem",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode != 0
    assert "certificate revoked" in verify.stdout + verify.stderr
    numbers = subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", tmp_path / "crl.der", "-noout", "-crlnumber"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    crl_number = int(numbers.strip().split("=")[1], 16)
    assert crl_number == revoked.json()["crl_number"]
    assert (
        crl_number
        > x509.load_der_x509_crl(crl_before.content).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    )
    refused = device.checkin()
    assert refused.status_code == 403
    assert "revoked" in refused.json()["detail"]


def test_retired_device_is_403(client, auth, database):
    from sqlalchemy import text

    device = Device(client, auth)
    with database.write_engine.begin() as connection:
        connection.execute(text("UPDATE device SET state = 'retired' WHERE id = :id"), {"id": device.id})
    response = device.checkin()
    assert response.status_code == 403
    assert "retired" in response.json()["detail"]


def test_expired_certificate_is_403(client, auth, database):
    from sqlalchemy import text

    device = Device(client, auth)
    with database.write_engine.begin() as connection:
        connection.execute(
            text("UPDATE device_certificate SET not_after = '2020-01-01 00:00:00' WHERE device_id = :id"),
            {"id": device.id},
        )
    assert device.checkin().status_code == 403


def test_twenty_concurrent_checkins_deliver_each_command_once(app, client, auth):
    device = Device(client, auth)
    sent = {lock(client, auth, device.id, f"lock {i}")["id"] for i in range(5)}
    barrier = threading.Barrier(20)

    def check_in(_: int) -> list[str]:
        with TestClient(app) as own:
            twin = Device.__new__(Device)
            twin.client, twin.key, twin.id = own, device.key, device.id
            barrier.wait()
            response = twin.checkin()
            assert response.status_code == 200, response.text
            return [c["id"] for c in response.json()["commands"]]

    with ThreadPoolExecutor(max_workers=20) as pool:
        deliveries = [cid for batch in pool.map(check_in, range(20)) for cid in batch]
    assert sorted(deliveries) == sorted(sent)


def test_unanswered_commands_are_delivered_again_after_the_timeout(client, auth, database):
    from sqlalchemy import text

    device = Device(client, auth)
    command = lock(client, auth, device.id)
    assert [c["id"] for c in device.checkin().json()["commands"]] == [command["id"]]
    assert device.checkin().json()["commands"] == []  # sent, within the window: not again
    with database.write_engine.begin() as connection:
        connection.execute(
            text("UPDATE command SET sent_at = '2020-01-01 00:00:00' WHERE id = :id"), {"id": command["id"]}
        )
    assert [c["id"] for c in device.checkin().json()["commands"]] == [command["id"]]
    history = client.get(f"/api/v1/devices/{device.id}/commands", headers=auth(Role.admin)).json()["items"]
    assert history[0]["deliveries"] == 2


def test_results_are_idempotent_and_not_now_backs_off(client, auth):
    device = Device(client, auth)
    command = lock(client, auth, device.id)
    device.checkin()
    assert device.answer(command["id"], "not_now", "device busy").status_code == 204
    history = client.get(f"/api/v1/devices/{device.id}/commands", headers=auth(Role.admin)).json()["items"]
    assert history[0]["status"] == "not_now"
    assert history[0]["not_before"] is not None
    assert device.checkin().json()["commands"] == []  # backing off
    assert device.answer(command["id"], "not_now").status_code == 204
    assert device.answer(command["id"], "error", "failed").status_code == 204
    assert device.answer(command["id"], "acknowledged").status_code == 204  # the first final answer stands
    history = client.get(f"/api/v1/devices/{device.id}/commands", headers=auth(Role.admin)).json()["items"]
    assert history[0]["status"] == "error"


def test_a_result_for_an_undelivered_or_unknown_command(client, auth):
    device = Device(client, auth)
    command = lock(client, auth, device.id)
    assert device.answer(command["id"]).status_code == 409
    assert device.answer("01a2260d-0000-7000-8000-000000000000").status_code == 404


def test_expired_and_cancelled_commands_are_not_delivered(client, auth, database):
    from sqlalchemy import text

    device = Device(client, auth)
    first = lock(client, auth, device.id, "one")
    second = lock(client, auth, device.id, "two")
    with database.write_engine.begin() as connection:
        connection.execute(
            text("UPDATE command SET expires_at = '2020-01-01 00:00:00' WHERE id = :id"), {"id": first["id"]}
        )
    cancelled = client.post(
        f"/api/v1/devices/{device.id}/commands/{second['id']}/cancel", headers=auth(Role.technician)
    )
    assert cancelled.json()["status"] == "cancelled"
    assert device.checkin().json()["commands"] == []
    statuses = {
        c["id"]: c["status"]
        for c in client.get(f"/api/v1/devices/{device.id}/commands", headers=auth(Role.admin)).json()["items"]
    }
    assert statuses == {first["id"]: "expired", second["id"]: "cancelled"}
    again = client.post(f"/api/v1/devices/{device.id}/commands/{second['id']}/cancel", headers=auth(Role.technician))
    assert again.status_code == 409


def test_erase_needs_confirmation_and_never_happens_while_held(client, auth):
    device = Device(client, auth)
    url = f"/api/v1/devices/{device.id}/commands"
    unconfirmed = client.post(url, json={"type": "EraseDevice"}, headers=auth(Role.technician))
    assert unconfirmed.status_code == 422
    assert "confirm" in unconfirmed.json()["detail"]
    queued = client.post(url, json={"type": "EraseDevice", "confirm": True}, headers=auth(Role.technician)).json()
    held = client.put(
        f"/api/v1/devices/{device.id}/hold",
        json={"held": True, "reason": "confiscated: incident 42"},
        headers=auth(Role.technician),
    )
    assert held.json()["held"] is True
    history = client.get(url, headers=auth(Role.admin)).json()["items"]
    assert {c["id"]: c["status"] for c in history}[queued["id"]] == "cancelled"  # a waiting erase is called off
    refused = client.post(url, json={"type": "EraseDevice", "confirm": True}, headers=auth(Role.admin))
    assert refused.status_code == 409
    assert "held" in refused.json()["detail"]
    assert device.checkin().json()["commands"] == []
    no_reason = client.put(f"/api/v1/devices/{device.id}/hold", json={"held": True}, headers=auth(Role.admin))
    assert no_reason.status_code == 422
    released = client.put(f"/api/v1/devices/{device.id}/hold", json={"held": False}, headers=auth(Role.admin))
    assert released.json()["held"] is False
    assert client.post(url, json={"type": "EraseDevice", "confirm": True}, headers=auth(Role.admin)).status_code == 201
    events = [
        e["action"]
        for e in client.get(f"/api/v1/audit?object_id={device.id}", headers=auth(Role.admin)).json()["items"]
    ]
    assert "device.hold" in events
    assert "device.release" in events


def test_unchanged_inventory_skips_the_writes(client, auth, database):
    from sqlalchemy import text

    device = Device(client, auth)
    device.checkin()
    with database.read_engine.connect() as connection:
        first = connection.execute(
            text("SELECT reported_at FROM device_inventory WHERE device_id = :id"), {"id": device.id}
        ).scalar_one()
    shuffled = {**INVENTORY, "apps": list(reversed(INVENTORY["apps"]))}
    device.checkin(shuffled)
    with database.read_engine.connect() as connection:
        second = connection.execute(
            text("SELECT reported_at FROM device_inventory WHERE device_id = :id"), {"id": device.id}
        ).scalar_one()
        apps = connection.execute(
            text("SELECT identifier, managed FROM device_app WHERE device_id = :id ORDER BY 1"), {"id": device.id}
        ).all()
    assert first == second
    assert [tuple(a) for a in apps] == [("com.example.maths", True), ("com.family.game", False)]
    device.checkin({**INVENTORY, "apps": INVENTORY["apps"][:1]})
    with database.read_engine.connect() as connection:
        count = connection.execute(
            text("SELECT count(*) FROM device_app WHERE device_id = :id"), {"id": device.id}
        ).scalar_one()
    assert count == 1


def test_bad_checkin_body_is_422_after_a_good_signature(client, auth):
    device = Device(client, auth)
    response = device.post(f"/api/v1/devices/{device.id}/checkin", {"inventory": {"apps": "lots"}})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"].startswith("inventory")


def test_a_quiet_checkin_replayed_after_the_nonce_purge_is_still_refused(client, auth, database):
    """Check-ins no longer purge nonces; the scheduled purge forgets only those past the skew window."""
    from datetime import timedelta

    from sqlalchemy import text

    from mdm.channel.agent.jobs import purge_stale_nonces
    from mdm.scheduler import JobContext

    device = Device(client, auth)
    assert device.checkin().status_code == 200  # stored: the next identical report changes nothing
    with database.write_engine.begin() as connection:
        connection.execute(
            text("INSERT INTO device_nonce (device_id, nonce, seen_at) VALUES (:id, :n, '2020-01-01 00:00:00')"),
            {"id": device.id, "n": "an-old-nonce-0000"},
        )
    path = f"/api/v1/devices/{device.id}/checkin"
    body = json.dumps({"inventory": INVENTORY}).encode()
    headers = signed_headers(device.key, "POST", path, body)
    assert client.post(path, content=body, headers=headers).status_code == 200
    context = JobContext(database, "purge-stale-nonces", datetime.now(UTC), "test", timedelta(minutes=1))
    assert purge_stale_nonces(context) == "purged 1 nonce(s)"
    replay = client.post(path, content=body, headers=headers)
    assert replay.status_code == 401
    assert "replay" in replay.json()["detail"]


def test_the_school_never_erases_a_personal_device(client, auth):
    url_of = "/api/v1/devices/{}/commands"
    for category in ("learner_owned", "staff_owned", "authorised", "visitor_owned"):
        device = Device(client, auth, category=category, serial=f"PERSONAL-{category.replace('_', '-')}")
        refused = client.post(
            url_of.format(device.id), json={"type": "EraseDevice", "confirm": True}, headers=auth(Role.admin)
        )
        assert refused.status_code == 409, category
        assert refused.headers["content-type"] == "application/problem+json"
        assert "personal device" in refused.json()["detail"]
        assert client.get(url_of.format(device.id), headers=auth(Role.admin)).json()["items"] == []
        assert device.checkin().json()["commands"] == []


def test_an_erase_the_device_ran_after_a_hold_is_recorded_not_dropped(client, auth):
    device = Device(client, auth)
    url = f"/api/v1/devices/{device.id}/commands"
    erase = client.post(url, json={"type": "EraseDevice", "confirm": True}, headers=auth(Role.admin)).json()
    assert [c["id"] for c in device.checkin().json()["commands"]] == [erase["id"]]
    hold = {"held": True, "reason": "confiscated: incident 7"}
    assert client.put(f"/api/v1/devices/{device.id}/hold", json=hold, headers=auth(Role.admin)).status_code == 200
    assert device.answer(erase["id"]).status_code == 204  # it was already wiping when the hold came
    history = {c["id"]: c for c in client.get(url, headers=auth(Role.admin)).json()["items"]}
    assert history[erase["id"]]["status"] == "acknowledged"
    assert "after it was cancelled" in history[erase["id"]]["result_detail"]
    after = client.get(f"/api/v1/devices/{device.id}", headers=auth(Role.admin)).json()
    assert after["state"] == "in_stock"
    events = client.get(f"/api/v1/audit?object_id={device.id}", headers=auth(Role.auditor)).json()["items"]
    assert "command.answered_late" in [e["action"] for e in events]
