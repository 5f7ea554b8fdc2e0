"""A changed report reconciles the device only when the change can move what the device is sent.

The plan reads a device's profiles and, of its apps, only those the catalogue names, and of a school
app that stays managed only whether it meets the minimum: the family's own apps updating, a school app
updating past its minimum, a new OS version or a passcode change are stored but cost no reconcile.
Everything a plan does read still reconciles at once, in the same check-in.
"""

from collections.abc import Iterator

import pytest
from sqlalchemy import event

from mdm.actor import Role
from mdm.inventory.service import reported_inventories
from tests.fleet import create_app, create_profile
from tests.test_channel import INVENTORY, Device

MATHS = {"identifier": "com.example.maths", "version": "2.1", "managed": True}
GAME = {"identifier": "com.family.game", "version": "1.0", "managed": False}
WIFI = {"type": "wifi", "ssid": "School", "security": "wpa2_enterprise"}


@pytest.fixture
def reconciles(database) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    """One entry per reconcile run meanwhile: each run reads the catalogue's scope rules first."""
    runs: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if "FROM scope_rule" in statement:
            runs.append(statement)

    event.listen(database.write_engine, "before_cursor_execute", record)
    yield runs
    event.remove(database.write_engine, "before_cursor_execute", record)


def school_device(client, auth) -> Device:  # type: ignore[no-untyped-def]
    create_app(client, auth, "com.example.maths", min_version="2.0", required_for=["school_single_user"])
    create_profile(client, auth, "uk.sch.example.wifi", [WIFI], categories=["school_single_user"])
    device = Device(client, auth)
    inventory = {**INVENTORY, "apps": [MATHS, GAME]}  # what the enrolment's commands put there
    for command in device.checkin(inventory).json()["commands"]:
        assert device.answer(command["id"]).status_code == 204
    assert device.checkin(inventory).json()["commands"] == []  # converged
    return device


def test_the_family_updating_its_own_app_stores_the_report_and_reconciles_nothing(client, auth, database, reconciles):
    device = school_device(client, auth)
    reconciles.clear()
    updated = {**INVENTORY, "apps": [MATHS, {**GAME, "version": "1.1"}], "os_version": "17.6"}
    response = device.checkin(updated)
    assert response.status_code == 200
    assert response.json()["commands"] == []
    assert reconciles == []
    assert client.get(f"/api/v1/devices/{device.id}", headers=auth(Role.admin)).json()["os_version"] == "17.6"
    with database.reading() as session:
        stored = reported_inventories(session, [device.id])[device.id]
    assert stored.apps["com.family.game"]["version"] == "1.1"


def test_a_school_app_removed_is_reinstalled_in_the_same_checkin(client, auth, reconciles):
    device = school_device(client, auth)
    reconciles.clear()
    commands = device.checkin({**INVENTORY, "apps": [GAME]}).json()["commands"]
    assert [(c["type"], c["payload"]["identifier"]) for c in commands] == [("InstallApplication", "com.example.maths")]
    assert len(reconciles) == 1


def test_a_school_app_updating_overnight_stores_the_report_and_reconciles_nothing(client, auth, database, reconciles):
    device = school_device(client, auth)
    reconciles.clear()
    assert device.checkin({**INVENTORY, "apps": [{**MATHS, "version": "2.2"}, GAME]}).json()["commands"] == []
    assert reconciles == []
    with database.reading() as session:
        assert reported_inventories(session, [device.id])[device.id].apps["com.example.maths"]["version"] == "2.2"


def test_a_school_app_falling_below_its_minimum_is_updated_in_the_same_checkin(client, auth, reconciles):
    device = school_device(client, auth)
    reconciles.clear()
    commands = device.checkin({**INVENTORY, "apps": [{**MATHS, "version": "1.9"}, GAME]}).json()["commands"]
    assert [(c["type"], c["payload"]["identifier"]) for c in commands] == [("InstallApplication", "com.example.maths")]
    assert len(reconciles) == 1


def test_a_school_app_the_family_took_over_is_reconciled(client, auth, reconciles):
    """Same version, no longer managed: the school's copy is gone, which only a reconcile can act on."""
    device = school_device(client, auth)
    reconciles.clear()
    assert device.checkin({**INVENTORY, "apps": [{**MATHS, "managed": False}, GAME]}).status_code == 200
    assert len(reconciles) == 1


def test_a_school_profile_removed_is_pushed_again_in_the_same_checkin(client, auth, reconciles):
    device = school_device(client, auth)
    reconciles.clear()
    commands = device.checkin({**INVENTORY, "apps": [MATHS, GAME], "profiles": []}).json()["commands"]
    assert [(c["type"], c["payload"]["identifier"]) for c in commands] == [("InstallProfile", "uk.sch.example.wifi")]
    assert len(reconciles) == 1


def test_a_profile_of_the_familys_own_reconciles_nothing(client, auth, reconciles):
    device = school_device(client, auth)
    reconciles.clear()
    own_vpn = {"identifier": "com.family.vpn", "version": 1}
    inventory = {**INVENTORY, "apps": [MATHS, GAME], "profiles": [*INVENTORY["profiles"], own_vpn]}
    assert device.checkin(inventory).json()["commands"] == []
    assert reconciles == []


def test_a_school_app_removed_among_thousands_of_family_changes_is_still_reinstalled(client, auth, reconciles):
    """A device cannot hide a removal behind a flood of other changes (5,000 apps in one look-up)."""
    device = school_device(client, auth)
    reconciles.clear()
    flood = [{"identifier": f"com.family.app{n:04d}", "version": "1.0", "managed": False} for n in range(4999)]
    commands = device.checkin({**INVENTORY, "apps": [GAME, *flood]}).json()["commands"]
    assert [(c["type"], c["payload"]["identifier"]) for c in commands] == [("InstallApplication", "com.example.maths")]
    assert len(reconciles) == 1
