"""Leavers in bulk, as the MIS sends them at the end of the year: N people leave at once (target: 2,000 in 10 s).

Two imports of `external_id,leaving_date,reason` through the exit import's own service function, each
timed alone: N leavers whose date is still to come (each case scheduled, the usual July import), then N
leaving today, each with an enrolled school iPad, so every case starts at once and plans its device's
offboarding (the heavier day). The people are imported first, through the people import.
"""

import tempfile
import time
from datetime import date
from pathlib import Path

from sqlalchemy import insert, select

from bench.databases import fresh_database, runtime_for
from bench.limits import at_most, figure
from exit_process.leavers import import_leavers_csv
from mdm.actor import cli_actor
from mdm.database import Database
from mdm.devices.models import Device
from mdm.ids import new_id, utcnow
from mdm.migrate import upgrade
from mdm.people.models import Person
from mdm.people.service import import_people_csv

LEAVERS = 2000
LIMIT_SECONDS = 10.0


def _people(database: Database, prefix: str, count: int) -> None:
    rows = "".join(f"{prefix}{n},learner,Leaver {n},Year 13\n" for n in range(count))
    with database.writing() as session:
        import_people_csv(
            session, f"external_id,kind,display_name,groups\n{rows}".encode(), cli_actor(), max_rows=count
        )


def _ipads(database: Database, prefix: str) -> None:
    """One enrolled school iPad for each of these people."""
    now = utcnow()
    with database.writing() as session:
        people = session.execute(select(Person.id).where(Person.external_id.startswith(prefix))).scalars().all()  # type: ignore[attr-defined]
        rows = [
            {
                "id": new_id(),
                "serial": f"{prefix}{n:06d}",
                "platform": "ipados",
                "category": "school_single_user",
                "state": "enrolled",
                "held": False,
                "person_id": person_id,
                "compliance_status": "compliant",
                "compliance_failures": [],
                "enrolled_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for n, person_id in enumerate(people)
        ]
        session.execute(insert(Device), rows)


def _timed_import(database: Database, prefix: str, count: int, leaving: date, timezone: str) -> tuple[float, dict]:
    lines = "".join(f"{prefix}{n},{leaving.isoformat()},end of year 13\n" for n in range(count))
    data = f"external_id,leaving_date,reason\n{lines}".encode()
    started = time.perf_counter()
    with database.writing() as session:
        result = import_leavers_csv(session, data, cli_actor(), timezone, max_rows=count)
    return time.perf_counter() - started, result.model_dump()


def run(leavers: int, database_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as folder, fresh_database(database_url, Path(folder)) as url:
        upgrade(url)
        runtime = runtime_for(url, Path(folder))
        database, timezone = runtime.database, runtime.settings.timezone
        try:
            _people(database, "LATER", leavers)
            _people(database, "TODAY", leavers)
            _ipads(database, "TODAY")
            later, scheduled = _timed_import(database, "LATER", leavers, date(2099, 7, 22), timezone)
            today, started = _timed_import(database, "TODAY", leavers, date.today(), timezone)
        finally:
            runtime.close()
    print(f"leavers: {scheduled['scheduled']:,} scheduled; {started['started']:,} started at once, one iPad each")
    limit = at_most(LIMIT_SECONDS, size=LEAVERS)
    figure(f"{leavers:,} leavers imported, leaving date to come", later, " s", limit, size=leavers)
    figure(f"{leavers:,} leavers imported, leaving today with an iPad each", today, " s", limit, size=leavers)
