"""How long an MIS export of N people takes to import: first time (all new), then again (all unchanged),
then with every tenth person moved to a new group. Peak memory is the process's maximum RSS. The issue
sets no limit on these: they are the reference for what an import costs.
"""

import resource
import tempfile
import time
from pathlib import Path

from bench.databases import fresh_database, runtime_for
from bench.limits import figure
from mdm.actor import cli_actor
from mdm.migrate import upgrade
from mdm.people.service import import_people_csv

HEADER = "external_id,kind,display_name,groups,date_of_birth"


def make_csv(rows: int, regroup_every: int = 0) -> bytes:
    lines = [HEADER]
    for i in range(rows):
        year = 7 + i % 7
        form = f"{year}X{i % 4}" if not (regroup_every and i % regroup_every == 0) else f"{year}Y{i % 4}"
        lines.append(f"UPN{i:07d},learner,Learner {i},Year {year};{form},2012-0{1 + i % 9}-1{i % 9}")
    return ("\n".join(lines) + "\n").encode()


def _timed(database, data: bytes) -> tuple[float, dict]:
    started = time.perf_counter()
    with database.writing() as session:
        # --rows is the benchmark's choice, not bound by the service's MDM_IMPORT_MAX_ROWS ceiling.
        result = import_people_csv(session, data, cli_actor(), max_rows=data.count(b"\n"))
    return time.perf_counter() - started, result.model_dump()


def run(rows: int, database_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as folder, fresh_database(database_url, Path(folder)) as url:
        upgrade(url)
        runtime = runtime_for(url, Path(folder))
        database = runtime.database
        try:
            for label, data in (
                ("new", make_csv(rows)),
                ("unchanged", make_csv(rows)),
                ("10% regrouped", make_csv(rows, regroup_every=10)),
            ):
                seconds, result = _timed(database, data)
                print(
                    f"people import, {rows:,} rows, {label}: created {result['created']}, "
                    f"updated {result['updated']}, unchanged {result['unchanged']}"
                )
                figure(f"people import, {rows:,} rows, {label}", seconds, " s")
        finally:
            runtime.close()
    figure("peak memory of the people benchmark", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, " MB")
