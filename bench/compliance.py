"""The nightly compliance run on a synthetic fleet: N enrolled devices with 60 school apps each.

Target on the project's 2-core machine: a full run over 100,000 devices in 20 s or less on SQLite,
peak memory under 500 MB, time growing linearly with the number of devices. One device in fifty has
lost an app, so the run also writes verdicts, history and remediation for a realistic share.
"""

import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from bench.databases import fresh_database, runtime_for
from compliance.service import run_compliance
from mdm.database import refresh_statistics
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
            for label in ("first run", "second run (nothing changed)"):
                began = time.perf_counter()
                result = run_compliance(database, "bench")
                print(
                    f"compliance run, {result.devices_evaluated:,} devices, {label}: {time.perf_counter() - began:.1f} s "
                    f"({result.compliant:,} compliant, {result.non_compliant:,} non-compliant, {result.changed:,} changed)"
                )
        finally:
            runtime.close()
    print(f"peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
