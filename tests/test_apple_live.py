"""A simulated iPad against a real `mdm serve`, over HTTP: enrolment to a leaver's exit (once, on SQLite).

The iPad keeps its own state (apps, whether each is managed, profiles) and answers the server's
commands the way iPadOS does; removing the enrolment profile takes every managed app and profile with
it, after which the iPad can no longer answer, only check out.
"""

import plistlib
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from asn1crypto import cms
from sqlalchemy import text as sqltext

from mdm.actor import Role, cli_actor
from mdm.auth.models import TokenCreate
from mdm.auth.service import create_token
from mdm.bootstrap import bootstrap
from mdm.channel.apple import push_certificate
from mdm.channel.apple.service import queue_inventory_queries
from mdm.hooks import APPLE_ENROLMENT_PROFILE_IDENTIFIER
from mdm.ids import utcnow
from mdm.settings import Settings
from tests.apple_device import AppleDevice, command_of, enrol_with_profile
from tests.fake_apns import ApplePortal
from tests.live_server import live_server

MATHS_STORE_ID = 361309726


ENROLMENT_PROFILE = APPLE_ENROLMENT_PROFILE_IDENTIFIER


@dataclass
class IPadState:
    apps: dict[str, bool] = field(default_factory=lambda: {"com.family.game": False})  # identifier -> managed
    profiles: set[str] = field(default_factory=set)
    locked_with: str | None = None
    store: dict[int, str] = field(default_factory=lambda: {MATHS_STORE_ID: "com.school.maths"})
    busy: bool = False  # the learner is in the middle of something: installs wait (NotNow)

    def run(self, command: dict[str, Any]) -> dict[str, Any]:
        """Does what the command says and answers with its data, as iPadOS would."""
        kind = command["RequestType"]
        if kind == "DeviceInformation":
            return {"QueryResponses": {"OSVersion": "17.5.1", "BuildVersion": "21F90", "ProductName": "iPad13,18"}}
        if kind == "SecurityInfo":
            return {"SecurityInfo": {"PasscodePresent": True, "PasscodeCompliant": True, "HardwareEncryptionCaps": 3}}
        if kind == "InstalledApplicationList":
            return {"InstalledApplicationList": [{"Identifier": i, "ShortVersion": "1.0"} for i in self.apps]}
        if kind == "ManagedApplicationList":
            return {"ManagedApplicationList": {i: {"Status": "Managed"} for i, managed in self.apps.items() if managed}}
        if kind == "ProfileList":
            return {"ProfileList": [{"PayloadIdentifier": p} for p in sorted(self.profiles | {ENROLMENT_PROFILE})]}
        if kind == "InstallProfile":
            signed = cms.ContentInfo.load(command["Payload"])["content"]["encap_content_info"]["content"].native
            self.profiles.add(plistlib.loads(signed)["PayloadIdentifier"])
        elif kind == "RemoveProfile":
            self.profiles.discard(command["Identifier"])
        elif kind == "InstallApplication":
            assert command["ManagementFlags"] == 1
            self.apps[self.store[command["iTunesStoreID"]]] = True
        elif kind == "RemoveApplication":
            assert self.apps.get(command["Identifier"]) is True, "only a managed app may be removed"
            del self.apps[command["Identifier"]]
        elif kind == "DeviceLock":
            self.locked_with = command.get("Message")
        return {}

    def remove_mdm(self) -> None:
        self.apps = {identifier: False for identifier, managed in self.apps.items() if not managed}
        self.profiles.clear()


def compliance_of(staff: httpx.Client, device_id: str) -> tuple[str, list[str]]:
    """Runs the compliance check as the nightly job does; the device's status and failed rules."""
    run = staff.post("/api/v1/compliance/runs").json()
    deadline = time.monotonic() + 30
    while staff.get(f"/api/v1/compliance/runs/{run['id']}").json()["status"] == "running":
        assert time.monotonic() < deadline, "the compliance run did not finish"
        time.sleep(0.1)
    verdict = staff.get(f"/api/v1/devices/{device_id}/compliance").json()
    return verdict["status"], [failure["rule"] for failure in verdict["failures"]]


def serve(ipad: AppleDevice, state: IPadState) -> list[str]:
    """One push's worth: connects and runs commands until none is due (or MDM is removed)."""
    seen = []
    command = command_of(ipad.connect())
    while command is not None:
        body = command["Command"]
        seen.append(body["RequestType"] + (f" {body.get('Identifier', '')}".rstrip()))
        if body == {"RequestType": "RemoveProfile", "Identifier": ENROLMENT_PROFILE}:
            state.remove_mdm()
            return seen  # the iPad is no longer managed: it cannot answer, only check out
        if state.busy and body["RequestType"] == "InstallApplication":
            command = command_of(ipad.connect("NotNow", command["CommandUUID"]))
            continue
        answer = state.run(body)
        command = command_of(ipad.connect("Acknowledged", command["CommandUUID"], **answer))
    return seen


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_leavers_ipad_from_enrolment_to_exit_over_real_http(tmp_path, database_url):
    data_dir = tmp_path / "data"
    with live_server(data_dir, database_url) as server:
        runtime = bootstrap(Settings(data_dir=data_dir, database_url=database_url, scheduler="off"))
        with runtime.database.writing() as session:
            admin = create_token(session, TokenCreate(name="test admin", role=Role.admin), cli_actor()).token
        staff = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin}"}, timeout=30)
        person = staff.post(
            "/api/v1/people", json={"external_id": "A1", "kind": "learner", "display_name": "A Learner", "groups": []}
        ).json()["id"]
        app = {
            "identifier": "com.school.maths",
            "name": "Maths",
            "platform": "ipados",
            "licence": "free",
            "required_for": ["authorised"],
            "itunes_store_id": MATHS_STORE_ID,
        }
        assert staff.post("/api/v1/apps", json=app).status_code == 201
        proxy = {"type": "proxy", "pac_url": "https://filter.example.sch.uk/proxy.pac"}
        profile = {"name": "Filter", "identifier": "uk.sch.example.proxy", "payloads": [proxy], "scope": {}}
        assert staff.post("/api/v1/profiles", json=profile).status_code == 201
        token = staff.post("/api/v1/enrollment-tokens", json={"category": "authorised", "person_id": person}).json()

        # The school loads its push certificate (the profile names its topic), then an iPad installs the
        # profile from the token's QR link and gets its identity by SCEP, as a real one does.
        cert_path, key_path, topic = ApplePortal().issue(tmp_path)
        files = push_certificate.read_files(cert_path.read_bytes(), key_path.read_bytes(), utcnow())
        with runtime.database.writing() as session:
            push_certificate.load(session, files, runtime.sealer, cli_actor())
        state = IPadState()
        device_client = httpx.Client(base_url=server.url, timeout=30)
        identity, mdm_payload = enrol_with_profile(device_client, token["token"])
        assert mdm_payload["Topic"] == topic
        assert mdm_payload["ServerURL"] == f"{server.url}/mdm/connect"
        ipad = AppleDevice(device_client, identity)
        assert ipad.authenticate().status_code == 200
        assert ipad.token_update().status_code == 200
        first = serve(ipad, state)
        assert {"DeviceInformation", "SecurityInfo", "ProfileList"} <= set(first)
        assert "InstallProfile" in first
        assert "InstallApplication" in first
        serve(ipad, state)  # the app lists asked again after the install
        assert state.apps == {"com.family.game": False, "com.school.maths": True}
        assert state.profiles == {"uk.sch.example.proxy"}
        device = next(d for d in staff.get("/api/v1/devices").json()["items"] if d["serial"] == ipad.serial)
        assert (device["state"], device["protocol"], device["os_version"]) == ("enrolled", "apple", "17.5.1")

        # The learner deletes the school's app. The next inventory shows it gone, the nightly check fails
        # the device, and the reinstall (put off once with NotNow) brings it back to compliant.
        del state.apps["com.school.maths"]
        state.busy = True
        with runtime.database.writing() as session:
            queue_inventory_queries(session, [device["id"]], ("InstalledApplicationList", "ManagedApplicationList"))
        assert "InstallApplication" in serve(ipad, state)  # queued at once; the iPad says not now
        assert compliance_of(staff, device["id"]) == ("non_compliant", ["required_apps"])
        state.busy = False
        with runtime.database.writing() as session:  # the NotNow back-off (a minute) has passed
            session.execute(sqltext("UPDATE command SET not_before = NULL WHERE status = 'not_now'"))
        assert "InstallApplication" in serve(ipad, state)
        serve(ipad, state)  # the app lists, asked again after the install
        assert state.apps["com.school.maths"] is True
        assert compliance_of(staff, device["id"]) == ("compliant", [])

        lock = staff.post(f"/api/v1/devices/{device['id']}/commands", json={"type": "DeviceLock", "message": "See IT"})
        assert lock.status_code == 201
        assert serve(ipad, state) == ["DeviceLock"]
        assert state.locked_with == "See IT"

        case = staff.post("/api/v1/exits", json={"person_id": person, "reason": "left school"}).json()
        removals: list[str] = []
        for _ in range(4):  # one push's worth each; the exit advances as the device answers
            removals += serve(ipad, state)
            if removals and removals[-1] == f"RemoveProfile {ENROLMENT_PROFILE}":
                break
        assert "RemoveApplication com.school.maths" in removals
        assert "RemoveProfile uk.sch.example.proxy" in removals
        assert removals[-1] == f"RemoveProfile {ENROLMENT_PROFILE}"  # RemoveMDM, last
        assert state.apps == {"com.family.game": False}  # the family's app stays
        assert state.profiles == set()
        assert ipad.checkin("CheckOut").status_code == 200

        after = staff.get(f"/api/v1/devices/{device['id']}").json()
        assert after["state"] == "retired"
        assert staff.get(f"/api/v1/exits/{case['id']}").json()["status"] == "completed"
        assert ipad.connect().status_code == 403  # its identity is revoked
        runtime.close()
