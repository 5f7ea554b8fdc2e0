"""The exit's daily and periodic work, each run once across replicas."""

from exit_process import flows, service
from mdm.scheduler import JobContext, JobSpec


def start_due_exits(timezone: str):  # type: ignore[no-untyped-def]
    def work(context: JobContext) -> str:
        with context.database.writing() as session:
            started = flows.start_due_cases(session, service.today(timezone))
            locked = flows.lock_uncollected(session, service.today(timezone))
        return f"started {len(started)} exit case(s); locked {len(locked)} uncollected device(s)"

    return work


def advance_open_exits(context: JobContext) -> str:
    """Moves every open case on from the facts: the safety net if an answer's update was ever lost."""
    with context.database.writing() as session:
        advanced = flows.advance_open_cases(session)
    return f"advanced {advanced} open exit case(s)"


def jobs(timezone: str) -> list[JobSpec]:
    return [
        JobSpec(name="start-due-exits", cron="5 0 * * *", work=start_due_exits(timezone)),
        JobSpec(name="advance-open-exits", cron="*/15 * * * *", work=advance_open_exits),
    ]
