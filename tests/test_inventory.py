"""What devices report, whole (the agent, every check-in) or in pieces (Apple answers one query at a time),
and the profile versions an acknowledged InstallProfile sets, on both databases."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, insert, select

from mdm.database import Database
from mdm.devices.models import Device
from mdm.ids import new_id
from mdm.inventory.models import DeviceApp, DeviceInventory, DeviceProfile, Inventory
from mdm.inventory.service import (
    record_profile_installed,
    record_profile_removed,
    reported_inventories,
    store_inventory,
)

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
WHOLE = {
    "os_version": "17.5.1",
    "build": "21F90",
    "passcode_set": True,
    "passcode_length": 6,
    "encrypted": True,
    "jailbroken": False,
    "malware_protection": None,
    "apps": [
        {"identifier": "com.example.maths", "version": "2.1", "managed": True},
        {"identifier": "com.family.game", "version": "1.0", "managed": False},
    ],
    "profiles": [{"identifier": "uk.sch.example.wifi", "version": 1}],
}


def enrolled_device(database: Database) -> str:
    device_id = new_id()
    with database.writing() as session:
        session.execute(
            insert(Device),
            [
                {
                    "id": device_id,
                    "platform": "ipados",
                    "category": "authorised",
                    "state": "enrolled",
                    "held": False,
                    "compliance_status": "unknown",
                    "compliance_failures": [],
                    "enrolled_at": NOW - timedelta(days=1),
                    "created_at": NOW,
                    "updated_at": NOW,
                }
            ],
        )
    return device_id


def report(
    database: Database, device_id: str, document: dict[str, Any], *, partial: bool = False, at: datetime = NOW
) -> bool:
    with database.writing() as session:
        return store_inventory(session, device_id, Inventory.model_validate(document), at, partial=partial)


def apps(database: Database, device_id: str) -> dict[str, tuple[str | None, bool]]:
    with database.reading() as session:
        rows = session.execute(
            select(DeviceApp.version, DeviceApp.managed, DeviceApp.identifier).where(DeviceApp.device_id == device_id)
        )
        return {identifier: (version, managed) for version, managed, identifier in rows}


def profiles(database: Database, device_id: str) -> dict[str, int | None]:
    with database.reading() as session:
        rows = session.execute(
            select(DeviceProfile.identifier, DeviceProfile.version).where(DeviceProfile.device_id == device_id)
        )
        return dict(rows.all())


def snapshot(database: Database, device_id: str) -> dict[str, Any]:
    with database.reading() as session:
        stored = session.get(DeviceInventory, device_id)
        assert stored is not None
        return stored.snapshot


@contextmanager
def statements(database: Database) -> Iterator[list[str]]:
    """Every SQL statement sent through the write engine meanwhile."""
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        seen.append(statement.split(None, 1)[0].upper())

    event.listen(database.write_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(database.write_engine, "before_cursor_execute", record)


def test_a_partial_apps_report_leaves_the_security_facts_and_profiles_untouched(database):
    device_id = enrolled_device(database)
    assert report(database, device_id, WHOLE)
    reader = {"identifier": "com.example.reader", "version": "3.0", "managed": True}
    assert report(database, device_id, {"apps": [reader]}, partial=True)
    assert apps(database, device_id) == {"com.example.reader": ("3.0", True)}
    assert profiles(database, device_id) == {"uk.sch.example.wifi": 1}
    stored = snapshot(database, device_id)
    assert (stored["os_version"], stored["passcode_set"], stored["passcode_length"]) == ("17.5.1", True, 6)
    assert report(database, device_id, {"passcode_set": False, "passcode_length": None}, partial=True)
    assert apps(database, device_id) == {"com.example.reader": ("3.0", True)}
    with database.reading() as session:
        inventory = reported_inventories(session, [device_id])[device_id]
    assert (inventory.os_version, inventory.build, inventory.passcode_set, inventory.passcode_length) == (
        "17.5.1",
        "21F90",
        False,
        None,
    )
    assert list(inventory.apps) == ["com.example.reader"]
    assert inventory.profiles == {"uk.sch.example.wifi": 1}


def test_a_partial_profiles_report_without_versions_keeps_acknowledged_versions_and_deletes_absent_ones(database):
    device_id = enrolled_device(database)
    assert report(database, device_id, {"os_version": "17.5.1"}, partial=True)
    with database.writing() as session:
        record_profile_installed(session, device_id, "uk.sch.example.wifi", 3)
        record_profile_installed(session, device_id, "uk.sch.example.proxy", 2)
    profile_list = [{"identifier": "uk.sch.example.wifi"}, {"identifier": "com.family.vpn"}]
    assert report(database, device_id, {"profiles": profile_list}, partial=True)
    assert profiles(database, device_id) == {"uk.sch.example.wifi": 3, "com.family.vpn": None}
    assert snapshot(database, device_id)["os_version"] == "17.5.1"
    # A version the device does report is taken as it is.
    assert report(
        database, device_id, {"profiles": [{"identifier": "uk.sch.example.wifi", "version": 4}]}, partial=True
    )
    assert profiles(database, device_id) == {"uk.sch.example.wifi": 4}


def test_a_profile_list_before_any_other_report_keeps_the_acknowledged_version(database):
    device_id = enrolled_device(database)
    with database.writing() as session:
        record_profile_installed(session, device_id, "uk.sch.example.wifi", 3)
    assert report(database, device_id, {"profiles": [{"identifier": "uk.sch.example.wifi"}]}, partial=True)
    assert profiles(database, device_id) == {"uk.sch.example.wifi": 3}


def test_an_unchanged_piece_returns_false_and_writes_nothing(database):
    device_id = enrolled_device(database)
    security = {"passcode_set": True, "passcode_length": 6, "encrypted": True}
    assert report(database, device_id, security, partial=True)
    with database.writing() as session:
        record_profile_installed(session, device_id, "uk.sch.example.wifi", 3)
    later = NOW + timedelta(hours=1)
    with statements(database) as seen:
        assert not report(database, device_id, security, partial=True, at=later)
        # The ProfileList confirms what was acknowledged: no change either.
        assert not report(database, device_id, {"profiles": [{"identifier": "uk.sch.example.wifi"}]}, partial=True)
    assert [s for s in seen if s not in {"SELECT", "BEGIN", "COMMIT", "ROLLBACK"}] == []
    with database.reading() as session:
        stored = session.get(DeviceInventory, device_id)
        assert stored is not None
        assert stored.reported_at == NOW


def test_a_whole_report_still_replaces_everything(database):
    device_id = enrolled_device(database)
    assert report(database, device_id, WHOLE)
    assert not report(database, device_id, WHOLE, at=NOW + timedelta(hours=1))
    assert report(database, device_id, {"os_version": "17.6"})
    assert apps(database, device_id) == {}  # no list is an empty list, as the agent has always meant it
    assert profiles(database, device_id) == {}
    stored = snapshot(database, device_id)
    assert (stored["os_version"], stored["passcode_set"], stored["apps"], stored["profiles"]) == ("17.6", None, [], [])


def test_an_acknowledged_install_sets_the_version_and_a_removal_drops_it(database):
    device_id = enrolled_device(database)
    assert report(database, device_id, WHOLE)
    with database.writing() as session:
        record_profile_installed(session, device_id, "uk.sch.example.wifi", 2)
        record_profile_installed(session, device_id, "uk.sch.example.proxy", 1)
    assert profiles(database, device_id) == {"uk.sch.example.wifi": 2, "uk.sch.example.proxy": 1}
    with database.writing() as session:
        record_profile_removed(session, device_id, "uk.sch.example.wifi")
        record_profile_removed(session, device_id, "uk.sch.example.never-installed")
    assert profiles(database, device_id) == {"uk.sch.example.proxy": 1}
    with database.reading() as session:
        assert reported_inventories(session, [device_id])[device_id].profiles == {"uk.sch.example.proxy": 1}
    # The agent then reports what was acknowledged: nothing changed, nothing to write or reconcile.
    agent_sees = {**WHOLE, "profiles": [{"identifier": "uk.sch.example.proxy", "version": 1}]}
    assert not report(database, device_id, agent_sees, at=NOW + timedelta(hours=1))


def test_reported_inventories_are_typed_and_absent_before_the_first_report(database):
    reported, silent = enrolled_device(database), enrolled_device(database)
    updated = "2026-11-29T08:00:00Z"
    document = {**WHOLE, "malware_protection": {"enabled": True, "definitions_updated_at": updated}}
    assert report(database, reported, document)
    with database.reading() as session:
        found = reported_inventories(session, [reported, silent])
    assert silent not in found
    inventory = found[reported]
    assert inventory.malware_protection is not None
    assert inventory.malware_protection.enabled is True
    assert inventory.malware_protection.definitions_updated_at == datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    maths = inventory.apps["com.example.maths"]
    assert (maths["version"], maths["managed"]) == ("2.1", True)
    assert (inventory.jailbroken, inventory.encrypted) == (False, True)


def test_a_changed_app_list_rewrites_only_the_apps_that_changed(database):
    device_id = enrolled_device(database)
    school = [{"identifier": f"com.school.app{n:02d}", "version": "2.1", "managed": True} for n in range(60)]
    assert report(database, device_id, {**WHOLE, "apps": school})
    drifted = [
        {**school[0], "version": "2.2"},  # updated
        {**school[1], "managed": False},  # the family took it over
        *school[3:],  # school[2] removed
        {"identifier": "com.family.game", "version": "1.0", "managed": False},  # added
    ]
    with rows_written(database) as written:
        assert report(database, device_id, {**WHOLE, "apps": drifted})
    assert apps(database, device_id) == {app["identifier"]: (app["version"], app["managed"]) for app in drifted}
    assert snapshot(database, device_id)["apps"] == drifted
    # The three apps that went or changed are deleted, the three new entries inserted; the 57 others
    # and the unchanged profiles are not rewritten.
    assert written["device_app"] == {"DELETE": 3, "INSERT": 3}
    assert "device_profile" not in written


@contextmanager
def rows_written(database: Database) -> Iterator[dict[str, dict[str, int]]]:
    """Rows each INSERT and DELETE touched meanwhile, by table."""
    written: dict[str, dict[str, int]] = {}

    def record(_conn, cursor, statement, parameters, _context, executemany) -> None:  # type: ignore[no-untyped-def]
        verb = statement.split(None, 1)[0].upper()
        if verb in {"INSERT", "DELETE"}:
            table = statement.split()[2].strip('"')
            rows = len(parameters) if verb == "INSERT" and executemany else cursor.rowcount
            counts = written.setdefault(table, {})
            counts[verb] = counts.get(verb, 0) + rows

    event.listen(database.write_engine, "after_cursor_execute", record)
    try:
        yield written
    finally:
        event.remove(database.write_engine, "after_cursor_execute", record)
