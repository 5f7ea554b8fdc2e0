"""The reconciler on a whole fleet: N enrolled devices, then a profile change that touches every one.

Target: re-push (a changed profile reconciled to every device it is on) to 50,000 devices within 10 s.

Reports the time, the commands queued and the SQL statements issued, which stay a handful per batch of
1,000 devices however many devices there are (no query per device). The services return only what the
API needs: the benchmark counts statements with an event listener and commands in the table itself,
both outside the timed work.
"""

import resource
import tempfile
import time
from pathlib import Path

from sqlalchemy import event, func, insert, select

from bench.databases import fresh_database, runtime_for
from bench.limits import Limit, at_most, figure
from mdm.actor import cli_actor
from mdm.commands.models import Command
from mdm.database import refresh_statistics
from mdm.devices.models import Device
from mdm.ids import new_id, utcnow
from mdm.inventory.models import DeviceProfile
from mdm.migrate import upgrade
from profiles.models import ProfileCreate, ProfileUpdate
from profiles.service import create_profile, update_profile

REPUSH_DEVICES = 50_000
PROXY = {"type": "proxy", "pac_url": "https://filter.example.sch.uk/proxy.pac"}


def _fleet(database, devices: int) -> list[str]:
    now = utcnow()
    ids = [new_id() for _ in range(devices)]
    rows = [
        {
            "id": i,
            "serial": f"S{n:07d}",
            "platform": "ipados",
            "category": "authorised",
            "state": "enrolled",
            "held": False,
            "compliance_status": "unknown",
            "compliance_failures": [],
            "created_at": now,
            "updated_at": now,
        }
        for n, i in enumerate(ids)
    ]
    with database.writing() as session:
        for start in range(0, devices, 5000):
            session.execute(insert(Device), rows[start : start + 5000])
    return ids


def _installed(database, ids: list[str], identifier: str, version: int) -> None:
    with database.writing() as session:
        rows = [{"device_id": i, "identifier": identifier, "version": version} for i in ids]
        for start in range(0, len(rows), 5000):
            session.execute(insert(DeviceProfile), rows[start : start + 5000])
        # A live fleet's check-ins arrive over hours and autovacuum keeps statistics current; a bulk
        # load in one go needs telling.
        refresh_statistics(session, "device", "device_profile", "command")


def _commands(database) -> int:  # type: ignore[no-untyped-def]
    with database.write_engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(Command)).scalar_one()


def _timed(database, label: str, devices: int, work, limit: Limit | None = None) -> None:  # type: ignore[no-untyped-def]
    before = _commands(database)
    statements = 0

    def count(*_args) -> None:  # type: ignore[no-untyped-def]
        nonlocal statements
        statements += 1

    event.listen(database.write_engine, "before_cursor_execute", count)
    started = time.perf_counter()
    with database.writing() as session:
        work(session)
    elapsed = time.perf_counter() - started
    event.remove(database.write_engine, "before_cursor_execute", count)
    queued = _commands(database) - before
    figure(f"reconcile, {label}", elapsed, " s", limit, size=devices)
    figure(f"reconcile, {label}: commands queued", queued, "")
    figure(f"reconcile, {label}: SQL statements", statements, "")


def run(devices: int, database_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as folder, fresh_database(database_url, Path(folder)) as url:
        upgrade(url)
        runtime = runtime_for(url, Path(folder))
        database, sealer = runtime.database, runtime.sealer
        try:
            ids = _fleet(database, devices)
            print(f"reconcile bench: {devices:,} enrolled devices")
            created: dict[str, str] = {}

            def create(session):  # type: ignore[no-untyped-def]
                data = ProfileCreate(name="Filter", identifier="uk.sch.example.proxy", payloads=[PROXY])
                created["id"] = create_profile(session, data, cli_actor(), sealer).id

            _timed(database, "new profile for all", devices, create)
            with database.write_engine.begin() as connection:
                connection.exec_driver_sql("UPDATE command SET status = 'acknowledged'")
            _installed(database, ids, "uk.sch.example.proxy", 1)
            _timed(database, "nothing to do", devices, create_profile_noop)
            new = ProfileUpdate(payloads=[{"type": "proxy", "host": "proxy.example.sch.uk", "port": 3128}])
            _timed(
                database,
                "profile changed (re-push)",
                devices,
                lambda s: update_profile(s, created["id"], new, cli_actor(), sealer),
                at_most(10, size=REPUSH_DEVICES),
            )
        finally:
            runtime.close()
    figure("peak memory of the reconcile benchmark", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, " MB")


def create_profile_noop(session):  # type: ignore[no-untyped-def]
    from mdm.desired_state import DeviceSelector
    from profiles.reconciler import reconcile

    return reconcile(session, DeviceSelector(everyone=True))
