"""Deleting history the service no longer needs: finished job runs here, other tables by their domains.

Rows go in batches, each batch in its own transaction with its audit event, so the first prune of a
large backlog never holds SQLite's write lock (or PostgreSQL's row locks) long enough to stall
check-ins, and the audit chain says what was deleted and when.
"""

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, select, tuple_
from sqlmodel import SQLModel, col

from mdm.actor import SYSTEM
from mdm.audit.service import record
from mdm.database import Database
from mdm.ids import utcnow
from mdm.scheduler import JobContext, JobSpec
from mdm.scheduler_models import JobRun

log = logging.getLogger("mdm.housekeeping")

BATCH_SIZE = 5000


def retention_cutoff(retention_days: int) -> datetime:
    return utcnow() - timedelta(days=retention_days)


def prune(
    database: Database,
    model: type[SQLModel],
    *conditions: ColumnElement[bool],
    reason: dict[str, Any],
    keep_alive: Callable[[], None] | None = None,
) -> int:
    """Deletes every row of `model` matching `conditions`, a batch per transaction; returns how many.

    `reason` goes into each batch's audit event beside the count (the rule that chose the rows).
    """
    table: Any = model.__table__  # type: ignore[attr-defined]
    keys = list(table.primary_key.columns)
    total = 0
    while True:
        chosen = select(*keys).where(*conditions).limit(BATCH_SIZE)
        target = keys[0].in_(chosen.scalar_subquery()) if len(keys) == 1 else tuple_(*keys).in_(chosen)
        with database.writing() as session:
            deleted = session.execute(delete(table).where(target)).rowcount
            if deleted:
                record(session, SYSTEM, "housekeeping.prune", table.name, None, {"deleted": deleted, **reason})
        total += deleted
        if keep_alive is not None:
            keep_alive()
        if deleted < BATCH_SIZE:
            log.info("pruned %d row(s) from %s", total, table.name)
            return total


def prune_job_runs(retention_days: int) -> Callable[[JobContext], str]:
    def work(context: JobContext) -> str:
        cutoff = retention_cutoff(retention_days)
        # A running row is a live claim (or an abandoned one the watcher will take over): never touched.
        deleted = prune(
            context.database,
            JobRun,
            col(JobRun.status) != "running",
            col(JobRun.finished_at) < cutoff,
            reason={"rule": "finished job runs", "older_than": cutoff},
            keep_alive=context.still_running,
        )
        return f"deleted {deleted} finished job run(s) older than {retention_days} day(s)"

    return work


def jobs(retention_days: int) -> list[JobSpec]:
    return [JobSpec(name="prune-job-runs", cron="20 3 * * *", work=prune_job_runs(retention_days))]
