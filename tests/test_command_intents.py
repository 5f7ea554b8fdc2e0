"""Commands hold protocol-neutral intents; the agent's adapter renders them only when the device collects them."""

import json

from sqlalchemy import inspect, text

from mdm.actor import Role
from tests.fleet import PROXY, WIFI_GUEST, Tablet, create_profile


def _stored_commands(database, device_id: str) -> list[dict]:
    with database.write_engine.connect() as connection:
        rows = connection.execute(
            text("SELECT type, payload, status, result_detail FROM command WHERE device_id = :d ORDER BY id"),
            {"d": device_id},
        )
        return [dict(row._mapping) for row in rows]


def test_a_queued_profile_is_an_intent_and_its_secret_is_stored_nowhere_in_the_queue(client, auth, tmp_path, database):
    create_profile(client, auth, "uk.sch.example.guest", [WIFI_GUEST])
    tablet = Tablet(client, auth, tmp_path, "T1")
    stored = _stored_commands(database, tablet.id)
    assert [(c["type"], c["status"]) for c in stored] == [("InstallProfile", "queued")]
    payload = stored[0]["payload"]
    assert (payload if isinstance(payload, dict) else json.loads(payload)) == {
        "identifier": "uk.sch.example.guest",
        "version": 1,
    }
    assert "sealed_payload" not in {c["name"] for c in inspect(database.write_engine).get_columns("command")}
    history = client.get(f"/api/v1/devices/{tablet.id}/commands", headers=auth(Role.admin)).json()["items"]
    assert history[0]["payload"] == {"identifier": "uk.sch.example.guest", "version": 1}

    tablet.converge()  # rendered at delivery: the device gets the whole profile, password included
    assert tablet.inventory.profile("uk.sch.example.guest").payloads[0]["password"] == "correct horse"


def test_a_profile_that_moved_on_before_delivery_is_withdrawn_not_sent(client, auth, tmp_path, database):
    tablet = Tablet(client, auth, tmp_path, "T1")
    assert tablet.agent.checkin() == []  # its inventory is on record: an unchanged check-in reconciles nothing
    profile = create_profile(client, auth, "uk.sch.example.proxy", [PROXY])
    # The profile moves on to version 2 without a reconcile (a state no single transaction leaves behind,
    # guarded all the same): the queued command names version 1.
    with database.write_engine.begin() as connection:
        connection.execute(text("UPDATE profile SET version = 2 WHERE id = :id"), {"id": profile["id"]})
    assert tablet.agent.checkin() == []
    stored = _stored_commands(database, tablet.id)
    assert [(c["type"], c["status"]) for c in stored] == [("InstallProfile", "cancelled"), ("InstallProfile", "queued")]
    assert "profile changed" in stored[0]["result_detail"]
    tablet.converge()
    assert tablet.profiles() == {"uk.sch.example.proxy": 2}


def test_an_acknowledged_install_counts_at_its_version_whatever_the_device_reports(client, auth, tmp_path, database):
    create_profile(client, auth, "uk.sch.example.proxy", [PROXY])
    tablet = Tablet(client, auth, tmp_path, "T1")
    [command] = tablet.agent.checkin()
    tablet.agent.report(command["id"], "acknowledged")  # answered before its next inventory arrives

    def reported() -> str:
        desired = client.get(f"/api/v1/devices/{tablet.id}/desired-state", headers=auth(Role.technician)).json()
        return {item["identifier"]: item["reported"] for item in desired["items"]}["uk.sch.example.proxy"]

    assert reported() == "installed"
    # A device that lists its profiles without versions (as Apple's ProfileList does) keeps version 1.
    inventory = {"os_version": "17.5.1", "passcode_set": True, "encrypted": True, "apps": []}
    path = f"/api/v1/devices/{tablet.id}/checkin"
    body = {"inventory": {**inventory, "profiles": [{"identifier": "uk.sch.example.proxy"}]}}
    assert tablet.agent.signed_request("POST", path, body).json()["commands"] == []
    assert reported() == "installed"
    # Once the device no longer lists it, it is missing again and queued again.
    again = tablet.agent.signed_request("POST", path, {"inventory": {**inventory, "profiles": []}}).json()
    assert [(c["type"], c["payload"]["version"]) for c in again["commands"]] == [("InstallProfile", 1)]
