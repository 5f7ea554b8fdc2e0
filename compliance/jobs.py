"""The nightly compliance run, once across replicas, in the school's time zone."""

from compliance import service
from mdm.scheduler import JobContext, JobSpec


def nightly_run(context: JobContext) -> str:
    def alive(_done: int, _total: int) -> None:
        context.still_running()  # each batch renews the lease: no other replica takes a live run over

    trigger = f"nightly {context.slot}"
    service.abandon_runs(context.database, trigger)  # a replica that died mid-run left its record behind
    run = service.run_compliance(context.database, trigger, progress=alive)
    return f"run {run.id}: {run.devices_evaluated} devices, {run.non_compliant} non-compliant"


JOBS = [JobSpec(name="compliance-nightly", cron="0 2 * * *", work=nightly_run)]
