"""Scheduled jobs that run once per time slot across every replica.

Each replica runs APScheduler (version 3) in process. When a job fires, the replica tries to claim the
(job, slot) row: the first insert wins and the others skip. The winner holds a lease that it renews
while it works; if its process dies, the lease runs out and another replica's watcher takes the slot
over and runs it to the end. Jobs must therefore be safe to run again from the start.
"""

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import update
from sqlmodel import Session, col, select

from mdm.database import Database, insert_ignoring_duplicates
from mdm.ids import utcnow
from mdm.scheduler_models import JobRun

log = logging.getLogger("mdm.scheduler")

DEFAULT_LEASE = timedelta(minutes=5)
WATCH_INTERVAL_SECONDS = 60
# A replica whose clock runs a little fast, or that fires late (busy, or just started), still names
# the slot that was due.
CLOCK_TOLERANCE = timedelta(minutes=1)
SLOT_LOOKBACK = timedelta(hours=2)

# A job's work: given a way to say "still alive", do the job for the slot.
JobWork = Callable[["JobContext"], str | None]


@dataclass(frozen=True)
class JobSpec:
    name: str
    cron: str  # crontab fields, in the school's timezone
    work: JobWork
    lease: timedelta = DEFAULT_LEASE


@dataclass
class JobContext:
    database: Database
    job: str
    slot: str
    owner: str
    lease: timedelta

    def still_running(self) -> None:
        """Renews the lease; long jobs call it as they make progress."""
        with self.database.writing() as session:
            renew(session, self.job, self.slot, self.owner, self.lease)


def replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(session: Session, job: str, slot: str, owner: str, lease: timedelta) -> bool:
    """True for the one replica that may run this slot: the first to insert, or one taking over a dead lease."""
    now = utcnow()
    row = {
        "job": job,
        "slot": slot,
        "status": "running",
        "owner": owner,
        "attempts": 1,
        "started_at": now,
        "lease_expires_at": now + lease,
    }
    if insert_ignoring_duplicates(session, JobRun, row):
        return True
    taken = session.execute(
        update(JobRun)
        .where(
            JobRun.job == job,
            JobRun.slot == slot,
            JobRun.status == "running",  # type: ignore[arg-type]
            col(JobRun.lease_expires_at) < now,
        )
        .values(owner=owner, lease_expires_at=now + lease, attempts=JobRun.attempts + 1)
        .returning(JobRun.job)
    ).first()
    return taken is not None


def renew(session: Session, job: str, slot: str, owner: str, lease: timedelta) -> None:
    session.execute(
        update(JobRun)
        .where(JobRun.job == job, JobRun.slot == slot, JobRun.owner == owner)  # type: ignore[arg-type]
        .values(lease_expires_at=utcnow() + lease)
    )


def finish(session: Session, job: str, slot: str, owner: str, status: str, detail: str | None) -> None:
    session.execute(
        update(JobRun)
        .where(JobRun.job == job, JobRun.slot == slot, JobRun.owner == owner)  # type: ignore[arg-type]
        .values(status=status, finished_at=utcnow(), detail=(detail or "")[:2000] or None)
    )


def run_slot(database: Database, spec: JobSpec, slot: str, owner: str | None = None) -> bool:
    """Runs the job for the slot if this replica wins it; returns whether it ran."""
    owner = owner or replica_name()
    with database.writing() as session:
        if not claim(session, spec.name, slot, owner, spec.lease):
            log.info("job %s for %s is another replica's", spec.name, slot)
            return False
    log.info("job %s for %s started", spec.name, slot)
    try:
        detail = spec.work(JobContext(database, spec.name, slot, owner, spec.lease))
    except Exception as exc:
        log.exception("job %s for %s failed", spec.name, slot)
        with database.writing() as session:
            finish(session, spec.name, slot, owner, "failed", f"{type(exc).__name__}: {exc}")
        return True
    with database.writing() as session:
        finish(session, spec.name, slot, owner, "completed", detail)
    log.info("job %s for %s completed", spec.name, slot, extra={"detail": detail})
    return True


def abandoned_slots(session: Session) -> list[tuple[str, str]]:
    """Slots whose runner stopped renewing its lease: its process died mid-run."""
    statement = select(JobRun.job, JobRun.slot).where(
        JobRun.status == "running", col(JobRun.lease_expires_at) < utcnow()
    )
    return [(job, slot) for job, slot in session.exec(statement)]


def resume_abandoned(database: Database, specs: dict[str, JobSpec]) -> int:
    with database.reading() as session:
        slots = abandoned_slots(session)
    resumed = 0
    for job, slot in slots:
        if job in specs and run_slot(database, specs[job], slot):
            resumed += 1
    return resumed


class Scheduler:
    """APScheduler 3 in the background: each job at its cron times, and a watcher for abandoned runs."""

    def __init__(self, database: Database, specs: list[JobSpec], timezone: str) -> None:
        self.database = database
        self.specs = {spec.name: spec for spec in specs}
        self.timezone = timezone
        self._scheduler = BackgroundScheduler(timezone=timezone)

    def start(self) -> None:
        for spec in self.specs.values():
            trigger = CronTrigger.from_crontab(spec.cron, timezone=self.timezone)
            self._scheduler.add_job(
                self._fire,
                trigger,
                args=[spec.name],
                id=spec.name,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=3600,
            )
        self._scheduler.add_job(
            resume_abandoned,
            "interval",
            args=[self.database, self.specs],
            seconds=WATCH_INTERVAL_SECONDS,
            id="resume-abandoned",
            max_instances=1,
        )
        self._scheduler.start()
        log.info("scheduler started with %s", ", ".join(self.specs) or "no jobs")

    def _fire(self, name: str) -> None:
        trigger = CronTrigger.from_crontab(self.specs[name].cron, timezone=self.timezone)
        run_slot(self.database, self.specs[name], slot_for(trigger, utcnow()))

    def shutdown(self) -> None:
        self._scheduler.shutdown(wait=False)


def slot_for(trigger: CronTrigger, now: datetime, lookback: timedelta = SLOT_LOOKBACK) -> str:
    """The scheduled time this firing belongs to, in UTC: the same on every replica, even a late one."""
    latest = None
    moment = trigger.get_next_fire_time(None, now - lookback)
    while moment is not None and moment <= now + CLOCK_TOLERANCE:
        latest = moment
        moment = trigger.get_next_fire_time(moment, moment + timedelta(seconds=1))
    return (latest or now).astimezone(UTC).isoformat(timespec="seconds")
