"""Apple's check-in and command endpoints: who may talk, enrolment at TokenUpdate, answers and inventory."""

import base64
import plistlib

import pytest
from cryptography.hazmat.primitives import serialization
from sqlmodel import select

from mdm.actor import Role
from mdm.channel.apple.models import AppleDevice
from mdm.commands.models import Command
from mdm.settings import Settings
from mdm.webhooks.models import WebhookDelivery
from tests.apple_device import AppleDevice as SimulatedIPad
from tests.apple_device import command_of, scep_identity


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """hooks.example.org is never resolved: the operator allows it, so a webhook can listen."""
    return Settings(**{**settings.model_dump(), "webhook_allowed_hosts": "hooks.example.org"})


def _listen(client, auth) -> None:
    events = ["device.enrolled", "device.unenrolled"]
    body = {"url": "https://hooks.example.org/mdm", "events": events}
    assert client.post("/api/v1/webhooks", json=body, headers=auth(Role.admin)).status_code == 201


def _events(database) -> list[str]:
    with database.reading() as session:
        return list(session.exec(select(WebhookDelivery.event_type)).all())


def _token(client, auth, category: str = "school_shared", person_id: str | None = None) -> dict:
    body = {"category": category, "max_uses": 30, **({"person_id": person_id} if person_id else {})}
    response = client.post("/api/v1/enrollment-tokens", json=body, headers=auth(Role.admin))
    assert response.status_code == 201, response.text
    return response.json()


def _ipad(client, runtime, token_id: str) -> SimulatedIPad:
    return SimulatedIPad(client, scep_identity(runtime, token_id))


def _device(client, auth, serial: str) -> dict:
    listed = client.get("/api/v1/devices", headers=auth(Role.admin)).json()["items"]
    return next(d for d in listed if d["serial"] == serial)


def _enrolled(client, auth, runtime, category: str = "school_shared") -> tuple[SimulatedIPad, dict]:
    ipad = _ipad(client, runtime, _token(client, auth, category)["id"])
    assert ipad.authenticate().status_code == 200
    assert ipad.token_update().status_code == 200
    return ipad, _device(client, auth, ipad.serial)


def _answer_queries(ipad: SimulatedIPad, answers: dict[str, dict]) -> list[str]:
    """Answers every command the server hands out with the canned answer for its RequestType."""
    seen = []
    command = command_of(ipad.connect())
    while command is not None:
        request_type = command["Command"]["RequestType"]
        seen.append(request_type)
        command = command_of(ipad.connect("Acknowledged", command["CommandUUID"], **answers.get(request_type, {})))
    return seen


def test_authenticate_then_token_update_enrols_an_ipad(client, auth, runtime, database):
    _listen(client, auth)
    ipad = _ipad(client, runtime, _token(client, auth)["id"])
    response = ipad.authenticate()
    assert response.status_code == 200, response.text
    assert response.content == b""
    device = _device(client, auth, ipad.serial)
    assert (device["protocol"], device["state"], device["platform"]) == ("apple", "registered", "ipados")
    assert device["model"] == "iPad13,18"
    assert ipad.token_update().status_code == 200
    device = _device(client, auth, ipad.serial)
    assert device["state"] == "enrolled"
    with database.reading() as session:
        stored = session.get(AppleDevice, device["id"])
        assert stored.push_token == ipad.token.hex()
        assert stored.push_magic == ipad.push_magic
    assert _events(database) == ["device.enrolled"]


def test_inventory_queries_follow_enrolment_and_their_answers_fill_the_inventory(client, auth, runtime, database):
    ipad, device = _enrolled(client, auth, runtime)
    answers = {
        "DeviceInformation": {"QueryResponses": {"OSVersion": "17.5.1", "BuildVersion": "21F90"}},
        "SecurityInfo": {"SecurityInfo": {"PasscodePresent": True, "HardwareEncryptionCaps": 3}},
        "InstalledApplicationList": {
            "InstalledApplicationList": [
                {"Identifier": "com.school.maths", "ShortVersion": "2.1"},
                {"Identifier": "com.family.game", "ShortVersion": "1.0"},
            ]
        },
        "ManagedApplicationList": {"ManagedApplicationList": {"com.school.maths": {"Status": "Managed"}}},
        "ProfileList": {"ProfileList": [{"PayloadIdentifier": "uk.sch.mdm.enrolment"}]},
    }
    seen = _answer_queries(ipad, answers)
    assert sorted(seen) == sorted(answers)
    compliance = client.get(f"/api/v1/devices/{device['id']}", headers=auth(Role.admin)).json()
    assert compliance["os_version"] == "17.5.1"
    with database.reading() as session:
        from mdm.inventory.service import stored_apps

        apps = stored_apps(session, device["id"])
    assert apps["com.school.maths"]["managed"] is True
    assert apps["com.family.game"]["managed"] is False
    # Queries are never piled up: a second TokenUpdate queues nothing more.
    assert ipad.token_update().status_code == 200
    assert command_of(ipad.connect()) is None


def test_errors_and_not_now_are_recorded_with_the_devices_words(client, auth, runtime):
    ipad, device = _enrolled(client, auth, runtime)
    first = command_of(ipad.connect())
    chain = [{"ErrorCode": 12021, "ErrorDomain": "MCMDMErrorDomain", "LocalizedDescription": "Nope."}]
    second = command_of(ipad.connect("Error", first["CommandUUID"], ErrorChain=chain))
    command_of(ipad.connect("NotNow", second["CommandUUID"]))
    history = client.get(f"/api/v1/devices/{device['id']}/commands", headers=auth(Role.admin)).json()["items"]
    by_id = {c["id"]: c for c in history}
    assert by_id[first["CommandUUID"]]["status"] == "error"
    assert "Nope. (MCMDMErrorDomain 12021)" in by_id[first["CommandUUID"]]["result_detail"]
    assert by_id[second["CommandUUID"]]["status"] == "not_now"


def test_a_lock_reaches_the_ipad_as_apples_command(client, auth, runtime):
    ipad, device = _enrolled(client, auth, runtime)
    _answer_queries(ipad, {})
    response = client.post(
        f"/api/v1/devices/{device['id']}/commands",
        json={"type": "DeviceLock", "message": "Return to IT"},
        headers=auth(Role.technician),
    )
    command = command_of(ipad.connect())
    assert command == {
        "CommandUUID": response.json()["id"],
        "Command": {"RequestType": "DeviceLock", "Message": "Return to IT"},
    }
    assert command_of(ipad.connect("Acknowledged", command["CommandUUID"])) is None


# --- Who may talk ------------------------------------------------------------------------------------


def test_an_unsigned_message_is_401(client, auth, runtime):
    ipad = _ipad(client, runtime, _token(client, auth)["id"])
    body = plistlib.dumps({"MessageType": "Authenticate", "UDID": ipad.udid})
    response = client.put("/mdm/checkin", content=body)
    assert response.status_code == 401
    assert "Mdm-Signature is missing" in response.json()["detail"]


def test_a_signature_over_another_body_is_401_and_changes_nothing(client, auth, runtime):
    ipad = _ipad(client, runtime, _token(client, auth)["id"])
    signed = plistlib.dumps({"MessageType": "Authenticate", "UDID": ipad.udid, "SerialNumber": ipad.serial})
    from tests.apple_device import mdm_signature

    forged = plistlib.dumps({"MessageType": "Authenticate", "UDID": "forged", "SerialNumber": ipad.serial})
    response = client.put(
        "/mdm/checkin", content=forged, headers={"Mdm-Signature": mdm_signature(signed, ipad.identity)}
    )
    assert response.status_code == 401
    assert "another body" in response.json()["detail"]
    assert not [
        d for d in client.get("/api/v1/devices", headers=auth(Role.admin)).json()["items"] if d["serial"] == ipad.serial
    ]


@pytest.mark.parametrize(("digest", "attributes"), [("sha1", False), ("sha1", True), ("sha256", False)])
def test_older_devices_signatures_are_accepted(client, auth, runtime, digest, attributes):
    ipad = _ipad(client, runtime, _token(client, auth)["id"])
    message = {"MessageType": "Authenticate", "UDID": ipad.udid, "SerialNumber": ipad.serial}
    assert ipad.put("/mdm/checkin", message, digest=digest, signed_attributes=attributes).status_code == 200


def test_a_certificate_from_another_ca_is_401(client, auth, runtime, tmp_path):
    from enrollment.ca import load_or_create_ca
    from tests.apple_device import Identity

    ipad = _ipad(client, runtime, _token(client, auth)["id"])
    other_ca = load_or_create_ca(tmp_path / "elsewhere", None)
    from cryptography import x509

    from tests.pki import csr_pem

    issued = other_ca.issue_device_certificate(csr_pem(ipad.identity.key), "6f1b0f6e-5a0e-4a53-9e57-2b8f1f0f2c11", 30)
    stranger = Identity(ipad.identity.key, x509.load_pem_x509_certificate(issued.pem.encode()))
    response = ipad.authenticate(identity=stranger)
    assert response.status_code == 401
    assert "not issued by the school" in response.json()["detail"]


def test_another_devices_certificate_is_401(client, auth, runtime):
    ipad, _ = _enrolled(client, auth, runtime)
    other, _ = _enrolled(client, auth, runtime)
    response = ipad.connect(identity=other.identity)
    assert response.status_code == 401
    assert "another device" in response.json()["detail"]


def test_a_revoked_ipad_is_403_and_gets_no_command(client, auth, runtime):
    ipad, device = _enrolled(client, auth, runtime)
    revoked = client.post(f"/api/v1/devices/{device['id']}/revoke", json={"reason": "lost"}, headers=auth(Role.admin))
    assert revoked.status_code == 200, revoked.text
    response = ipad.connect()
    assert response.status_code == 403
    assert "revoked" in response.json()["detail"]


def test_a_repeated_idle_connect_is_verified_once_and_still_refused_once_revoked(client, auth, runtime, monkeypatch):
    from mdm.channel.apple import signature

    ipad, device = _enrolled(client, auth, runtime)
    body, headers = ipad.signed(ipad.report())
    parsed = []
    real = signature._signed_data
    monkeypatch.setattr(signature, "_signed_data", lambda der: parsed.append(der) or real(der))
    for _ in range(3):  # the same bytes each time, as a device that signs no signing time sends them
        assert client.put("/mdm/connect", content=body, headers=headers).status_code == 200
    assert len(parsed) == 1
    # The remembered verdict is about the bytes, never about whether the device may still talk.
    revoked = client.post(f"/api/v1/devices/{device['id']}/revoke", json={"reason": "lost"}, headers=auth(Role.admin))
    assert revoked.status_code == 200, revoked.text
    response = client.put("/mdm/connect", content=body, headers=headers)
    assert response.status_code == 403
    assert "revoked" in response.json()["detail"]


def test_a_remembered_signature_over_another_body_is_still_401(client, auth, runtime):
    ipad, _ = _enrolled(client, auth, runtime)
    body, headers = ipad.signed(ipad.report())
    assert client.put("/mdm/connect", content=body, headers=headers).status_code == 200
    forged = body.replace(b"Idle", b"Acknowledged")
    assert forged != body
    response = client.put("/mdm/connect", content=forged, headers=headers)
    assert response.status_code == 401
    assert "another body" in response.json()["detail"]


def test_failed_signatures_are_not_remembered(client, auth, runtime, monkeypatch):
    from mdm.channel.apple import signature

    ipad, _ = _enrolled(client, auth, runtime)
    body, headers = ipad.signed(ipad.report())
    forged = body.replace(b"Idle", b"Acknowledged")
    parsed = []
    real = signature._signed_data
    monkeypatch.setattr(signature, "_signed_data", lambda der: parsed.append(der) or real(der))
    for _ in range(2):
        assert client.put("/mdm/connect", content=forged, headers=headers).status_code == 401
    assert len(parsed) == 2


def test_an_expired_identity_is_403_and_gets_no_command(client, auth, runtime, database):
    from sqlalchemy import text

    ipad, device = _enrolled(client, auth, runtime)
    client.post(f"/api/v1/devices/{device['id']}/commands", json={"type": "DeviceLock"}, headers=auth(Role.admin))
    with database.write_engine.begin() as connection:
        connection.execute(
            text("UPDATE device_certificate SET not_after = :past WHERE device_id = :d"),
            {"past": "2020-01-01 00:00:00", "d": device["id"]},
        )
    response = ipad.connect()
    assert response.status_code == 403
    assert "expired" in response.json()["detail"]


def test_a_second_authenticate_for_an_enrolled_udid_from_another_identity_is_refused(client, auth, runtime):
    ipad, _ = _enrolled(client, auth, runtime)
    token = _token(client, auth)
    impostor = SimulatedIPad(client, scep_identity(runtime, token["id"]), udid=ipad.udid, serial=ipad.serial)
    response = impostor.authenticate()
    assert response.status_code == 409
    assert "already enrolled with another identity" in response.json()["detail"]
    assert ipad.connect().status_code == 200  # the real iPad is untouched


def test_client_cert_header_is_believed_only_when_the_proxy_is_trusted(client, auth, runtime, app):
    ipad = _ipad(client, runtime, _token(client, auth)["id"])
    der = ipad.identity.certificate.public_bytes(serialization.Encoding.DER)
    header = {"Client-Cert": f":{base64.b64encode(der).decode()}:"}
    body = plistlib.dumps({"MessageType": "Authenticate", "UDID": ipad.udid, "SerialNumber": ipad.serial})
    refused = client.put("/mdm/checkin", content=body, headers=header)
    assert refused.status_code == 401
    assert "MDM_TRUST_CLIENT_CERT_HEADER" in refused.json()["detail"]
    app.state.settings = app.state.settings.model_copy(update={"trust_client_cert_header": True})
    assert client.put("/mdm/checkin", content=body, headers=header).status_code == 200


# --- What devices may send --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message_type", "status"), [("UserAuthenticate", 410), ("DeclarativeManagement", 400), ("GetBootstrapToken", 400)]
)
def test_unsupported_message_types_are_4xx(client, auth, runtime, message_type, status):
    ipad = _ipad(client, runtime, _token(client, auth)["id"])
    assert ipad.checkin(message_type).status_code == status


def test_the_user_channel_is_refused_politely(client, auth, runtime):
    ipad, _ = _enrolled(client, auth, runtime)
    assert ipad.token_update(UserID="A1B2", UserShortName="pupil").status_code == 410
    assert ipad.connect(UserID="A1B2").status_code == 410


def test_a_body_that_is_not_a_plist_is_400(client, auth, runtime):
    ipad = _ipad(client, runtime, _token(client, auth)["id"])
    from tests.apple_device import mdm_signature

    body = b"<plist><dict><key>MessageType</key>"
    response = client.put("/mdm/checkin", content=body, headers={"Mdm-Signature": mdm_signature(body, ipad.identity)})
    assert response.status_code == 400


def test_a_body_over_the_limit_is_413(client):
    assert client.put("/mdm/connect", content=b"x" * (2 * 1024 * 1024)).status_code == 413


# --- Leaving ---------------------------------------------------------------------------------------


def test_check_out_retires_a_personal_device(client, auth, runtime):
    ipad, device = _enrolled(client, auth, runtime, category="authorised")
    assert ipad.checkin("CheckOut").status_code == 200
    after = client.get(f"/api/v1/devices/{device['id']}", headers=auth(Role.admin)).json()
    assert after["state"] == "retired"
    assert ipad.connect().status_code == 403


def test_check_out_of_a_school_device_tells_a_technician(client, auth, runtime, database):
    _listen(client, auth)
    ipad, device = _enrolled(client, auth, runtime)
    assert ipad.checkin("CheckOut").status_code == 200
    after = client.get(f"/api/v1/devices/{device['id']}", headers=auth(Role.admin)).json()
    assert after["state"] == "enrolled"
    assert _events(database) == ["device.enrolled", "device.unenrolled"]


def test_an_unknown_command_uuid_is_no_reason_to_stop(client, auth, runtime):
    ipad, _ = _enrolled(client, auth, runtime)
    command = command_of(ipad.connect("Acknowledged", "00000000-0000-0000-0000-000000000000"))
    assert command is not None
    with runtime.database.reading() as session:
        assert session.get(Command, command["CommandUUID"]) is not None


def test_the_inventory_job_asks_a_device_again_once_its_report_is_old_and_never_piles_up(
    client, auth, runtime, database
):
    from datetime import timedelta

    from sqlalchemy import text

    from mdm.channel.apple.jobs import ask_for_inventory

    class Context:  # what the scheduler hands a job; still_running only renews its lease
        def __init__(self) -> None:
            self.database = runtime.database

        def still_running(self) -> None:
            pass

    ipad, device = _enrolled(client, auth, runtime)
    _answer_queries(ipad, {"DeviceInformation": {"QueryResponses": {"OSVersion": "17.5.1"}}})

    def open_queries() -> int:
        with database.reading() as session:
            rows = session.exec(
                select(Command).where(
                    Command.device_id == device["id"],
                    Command.type == "QueryInventory",
                    Command.status.in_(("queued", "sent", "not_now")),  # type: ignore[attr-defined]
                )
            )
            return len(list(rows))

    interval = timedelta(hours=4)
    assert ask_for_inventory(Context(), interval).startswith("asked 0 Apple device(s)")  # its report is fresh
    with database.write_engine.begin() as connection:
        connection.execute(
            text("UPDATE device_inventory SET reported_at = :old WHERE device_id = :d"),
            {"old": "2020-01-01 00:00:00", "d": device["id"]},
        )
    assert ask_for_inventory(Context(), interval) == "asked 1 Apple device(s) for their inventory (5 queries queued)"
    assert open_queries() == 5
    assert ask_for_inventory(Context(), interval).endswith("(0 queries queued)")  # still open: none piled up
    assert open_queries() == 5
    assert sorted(_answer_queries(ipad, {})) == sorted(
        ["DeviceInformation", "SecurityInfo", "InstalledApplicationList", "ManagedApplicationList", "ProfileList"]
    )


def test_device_information_updates_the_devices_model_and_name(client, auth, runtime):
    ipad, device = _enrolled(client, auth, runtime)
    facts = {"QueryResponses": {"OSVersion": "17.6", "ProductName": "iPad14,1", "DeviceName": "Cart 3 iPad 7"}}
    _answer_queries(ipad, {"DeviceInformation": facts})
    shown = client.get(f"/api/v1/devices/{device['id']}", headers=auth(Role.technician)).json()
    assert (shown["model"], shown["name"], shown["os_version"]) == ("iPad14,1", "Cart 3 iPad 7", "17.6")


def test_an_os_version_longer_than_the_device_record_holds_is_cut_not_a_500(client, auth, runtime):
    """A device's plist is not validated as a request body is: its facts are kept, cut to what the row holds."""
    ipad, device = _enrolled(client, auth, runtime)
    long = "17." + "9" * 60
    _answer_queries(ipad, {"DeviceInformation": {"QueryResponses": {"OSVersion": long}}})
    shown = client.get(f"/api/v1/devices/{device['id']}", headers=auth(Role.technician)).json()
    assert shown["os_version"] == long[:50]


def test_an_apple_identity_cannot_take_a_school_device_by_claiming_its_serial(client, auth, runtime, database):
    """The attack of the agent's H1, over Apple's protocol: an identity from any token claims a known serial."""
    person = client.post(
        "/api/v1/people",
        json={"external_id": "V1", "kind": "learner", "display_name": "Victim", "groups": []},
        headers=auth(Role.admin),
    ).json()["id"]
    registered = client.post(
        "/api/v1/devices",
        json={"serial": "DMPVICTIM01", "platform": "ipados", "category": "school_single_user", "person_id": person},
        headers=auth(Role.admin),
    )
    assert registered.status_code == 201, registered.text
    # A token of another category, or one made for another person (the agent's rules, the same refusals).
    other = client.post(
        "/api/v1/people",
        json={"external_id": "T1", "kind": "learner", "display_name": "Thief", "groups": []},
        headers=auth(Role.admin),
    ).json()["id"]
    for token in (_token(client, auth, "school_shared"), _token(client, auth, "school_single_user", other)):
        thief = SimulatedIPad(client, scep_identity(runtime, token["id"]), serial="DMPVICTIM01")
        refused = thief.authenticate()
        assert refused.status_code == 409, refused.text
    device = _device(client, auth, "DMPVICTIM01")
    assert (device["state"], device["category"], device["person_id"], device["protocol"]) == (
        "registered",
        "school_single_user",
        person,
        "agent",
    )
    with database.reading() as session:
        assert session.get(AppleDevice, device["id"]) is None


def test_a_strangers_certificates_are_not_remembered(client, auth, runtime, tmp_path):
    """Anyone can sign a message with a certificate of their own making: none of it may stay in memory.

    What is checked of a certificate is remembered per process, but only for the school's own; a
    stranger sending thousands of large certificates would otherwise pin them all.
    """
    from cryptography import x509

    from enrollment.ca import load_or_create_ca
    from mdm.channel.apple import signature
    from tests.apple_device import Identity
    from tests.pki import csr_pem
    from tests.scep_client import new_rsa_key

    def remembered() -> int:
        caches = [getattr(signature, name) for name in dir(signature)]
        return sum(cache.cache_info().currsize for cache in caches if hasattr(cache, "cache_info"))

    ipad = _ipad(client, runtime, _token(client, auth)["id"])
    other_ca = load_or_create_ca(tmp_path / "elsewhere", None)
    before = remembered()
    for n in range(3):
        key = new_rsa_key()
        issued = other_ca.issue_device_certificate(csr_pem(key), f"6f1b0f6e-5a0e-4a53-9e57-2b8f1f0f2c1{n}", 30)
        stranger = Identity(key, x509.load_pem_x509_certificate(issued.pem.encode()))
        assert ipad.authenticate(identity=stranger).status_code == 401
    assert remembered() == before
    assert ipad.authenticate().status_code == 200
    assert remembered() == before + 1  # the school's own certificate is
