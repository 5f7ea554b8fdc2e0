"""The nightly compliance run on a synthetic fleet: N enrolled devices with 60 school apps each.

Targets on the project's 2-core machine: a full run over 100,000 devices in 20 s or less, peak memory
under 500 MB, and within 10x of one raw SQL scan of the same rows. One device in fifty has lost an app,
so the run also writes verdicts, history and remediation for a realistic share.

The scan is the floor no run can beat: the rows the run reads (each enrolled device's own columns, its
inventory snapshot, its acknowledged profiles) fetched in pages through the driver's cursor, with no
ORM, no JSON decoding (the snapshot comes as text on either backend), no rules and no writes. Peak
memory is the process's maximum RSS before the scan, building the synthetic fleet included.
"""

import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from bench.databases import fresh_database, runtime_for
from bench.limits import at_most, figure
from compliance.service import run_compliance
from mdm.database import Database, refresh_statistics
from mdm.devices.models import Device
from mdm.ids import new_id, utcnow
from mdm.inventory.models import DeviceApp, DeviceInventory
from mdm.migrate import upgrade
from profiles.models import App, ScopeRule

APPS = 60
MISSING = 7  # the app that one device in fifty has lost


def _snapshots(apps: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A complete device's inventory snapshot, and one missing app number MISSING."""
    snapshot = {
        "os_version": "17.5.1",
        "build": "21F90",
        "passcode_set": True,
        "encrypted": True,
        "jailbroken": False,
        "malware_protection": None,
        "profiles": [],
        # A device's inventory snapshot holds its whole app list, as a real check-in's does.
        "apps": [{"identifier": f"com.school.app{n:02d}", "version": "2.1", "managed": True} for n in range(apps)],
    }
    missing = {**snapshot, "apps": [a for a in snapshot["apps"] if a["identifier"] != f"com.school.app{MISSING:02d}"]}
    return snapshot, missing


def _catalogue(session, apps: int = APPS) -> list[str]:  # type: ignore[no-untyped-def]
    now = utcnow()
    ids = [new_id() for _ in range(apps)]
    session.execute(
        insert(App),
        [
            {
                "id": i,
                "identifier": f"com.school.app{n:02d}",
                "name": f"App {n}",
                "platform": "ios",
                "licence": "free",
                "licences_total": 0,
                "min_version": "2.0",
                "created_at": now,
                "updated_at": now,
            }
            for n, i in enumerate(ids)
        ],
    )
    session.execute(insert(ScopeRule), [{"owner_id": i, "kind": "category", "value": "authorised"} for i in ids])
    return ids


def _fleet(database, devices: int, apps: int = APPS) -> None:  # type: ignore[no-untyped-def]
    """N enrolled devices with `apps` required school apps each (tests use fewer, to build it quickly)."""
    now = utcnow()
    snapshot, missing = _snapshots(apps)
    with database.writing() as session:
        _catalogue(session, apps)
    for start in range(0, devices, 2000):
        with database.writing() as session:
            ids = [new_id() for _ in range(min(2000, devices - start))]
            session.execute(
                insert(Device),
                [
                    {
                        "id": i,
                        "serial": None,
                        "platform": "ipados",
                        "category": "authorised",
                        "state": "enrolled",
                        "held": False,
                        "compliance_status": "compliant",
                        "compliance_failures": [],
                        "last_checkin_at": now,
                        "enrolled_at": now,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in ids
                ],
            )
            session.execute(
                insert(DeviceInventory),
                [
                    {
                        "device_id": i,
                        "reported_at": now,
                        "content_hash": "x",
                        "snapshot": missing if k % 50 == 0 else snapshot,
                    }
                    for k, i in enumerate(ids)
                ],
            )
            installed = [
                {"device_id": i, "identifier": f"com.school.app{n:02d}", "version": "2.1", "managed": True}
                for k, i in enumerate(ids)
                for n in range(apps)
                if not (k % 50 == 0 and n == MISSING)
            ]
            session.execute(insert(DeviceApp), installed)
    with database.writing() as session:
        refresh_statistics(session, "device", "device_app", "device_inventory", "app", "scope_rule")


# What the run reads (devices.compliance_rows, inventory.reported_inventories), as plain SQL.
SCAN = (
    "SELECT id, platform, category, os_version, person_id, last_checkin_at, enrolled_at, compliance_status,"
    " compliance_failures, compliance_failing_since, quarantined_at FROM device WHERE state = 'enrolled'",
    # As text on both backends: psycopg would otherwise decode PostgreSQL's JSON, SQLite's driver never does.
    "SELECT device_id, CAST(snapshot AS TEXT) FROM device_inventory",
    "SELECT device_id, identifier, version FROM device_profile",
)
TARGET_DEVICES = 100_000
SCAN_PAGE = 5000


def raw_scan(database: Database) -> tuple[float, int]:
    """Seconds to fetch every row the run reads through the DBAPI cursor, and how many rows that was."""
    connection = database.read_engine.raw_connection()
    try:
        started, rows = time.perf_counter(), 0
        cursor = connection.cursor()
        for statement in SCAN:
            cursor.execute(statement)
            # In pages, as the run reads: all 100,000 snapshots at once would be the benchmark's peak memory.
            while page := cursor.fetchmany(SCAN_PAGE):
                rows += len(page)
        cursor.close()
        return time.perf_counter() - started, rows
    finally:
        connection.close()


def run(devices: int, database_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as folder, fresh_database(database_url, Path(folder)) as url:
        upgrade(url)
        runtime = runtime_for(url, Path(folder))
        database = runtime.database
        try:
            started = time.perf_counter()
            _fleet(database, devices)
            print(
                f"compliance bench: {devices:,} devices with {APPS} apps each made in {time.perf_counter() - started:.0f} s"
            )
            seconds = []
            for label in ("first run", "second run (nothing changed)"):
                began = time.perf_counter()
                result = run_compliance(database, "bench")
                seconds.append(time.perf_counter() - began)
                print(
                    f"compliance run, {result.devices_evaluated:,} devices, {label}: {seconds[-1]:.1f} s "
                    f"({result.compliant:,} compliant, {result.non_compliant:,} non-compliant, {result.changed:,} changed)"
                )
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the fleet and the runs, not the scan
            scan, rows = raw_scan(database)
        finally:
            runtime.close()
    print(f"raw SQL scan of the rows the run reads: {rows:,} rows")
    size = {"size": devices}
    figure(f"compliance run, {devices:,} devices", seconds[0], " s", at_most(20, size=TARGET_DEVICES), **size)
    figure(
        f"compliance run again, {devices:,} devices, nothing changed",
        seconds[1],
        " s",
        at_most(20, size=TARGET_DEVICES),
        **size,
    )
    figure("raw SQL scan of the same rows", scan, " s")
    figure("compliance run / raw scan", seconds[0] / scan, "x", at_most(10))
    figure("peak memory of the compliance benchmark", peak_mb, " MB", at_most(500, size=TARGET_DEVICES), **size)
