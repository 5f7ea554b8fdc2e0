"""Scheduled jobs run once per slot across replicas, and a dead replica's run is taken over."""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import text

from mdm.actor import Role
from mdm.scheduler import JobSpec, resume_abandoned, run_slot, slot_for

SLOT = "2026-11-30T02:00:00+00:00"


def _counting_job(name: str = "nightly"):  # type: ignore[no-untyped-def]
    runs: list[str] = []
    lock = threading.Lock()

    def work(context) -> str:  # type: ignore[no-untyped-def]
        with lock:
            runs.append(context.owner)
        context.still_running()
        return "done"

    return JobSpec(name=name, cron="0 2 * * *", work=work), runs


def test_many_replicas_firing_the_same_slot_run_it_once(database):
    spec, runs = _counting_job()
    barrier = threading.Barrier(6)

    def replica(i: int) -> bool:
        barrier.wait()
        return run_slot(database, spec, SLOT, owner=f"replica-{i}")

    with ThreadPoolExecutor(max_workers=6) as pool:
        ran = list(pool.map(replica, range(6)))
    assert ran.count(True) == 1
    assert len(runs) == 1
    assert run_slot(database, spec, SLOT, owner="late-replica") is False  # a finished slot stays finished
    assert run_slot(database, spec, "2026-12-01T02:00:00+00:00", owner="replica-0") is True  # the next night runs
    with database.read_engine.connect() as connection:
        statuses = connection.execute(text("SELECT slot, status, detail FROM job_run ORDER BY slot")).all()
    assert [tuple(row) for row in statuses] == [
        (SLOT, "completed", "done"),
        ("2026-12-01T02:00:00+00:00", "completed", "done"),
    ]


def test_a_run_whose_replica_died_is_taken_over_after_its_lease(database):
    spec, runs = _counting_job()
    with database.write_engine.begin() as connection:  # a replica claimed the slot, then died
        connection.execute(
            text(
                "INSERT INTO job_run (job, slot, status, owner, attempts, started_at, lease_expires_at) "
                "VALUES ('nightly', :slot, 'running', 'dead:1', 1, :started, :lease)"
            ),
            {
                "slot": SLOT,
                "started": datetime.now(UTC) - timedelta(minutes=10),
                "lease": datetime.now(UTC) + timedelta(minutes=2),
            },
        )
    assert resume_abandoned(database, {"nightly": spec}) == 0  # its lease still runs: hands off
    assert run_slot(database, spec, SLOT, owner="other") is False
    with database.write_engine.begin() as connection:
        connection.execute(
            text("UPDATE job_run SET lease_expires_at = :past"), {"past": datetime.now(UTC) - timedelta(seconds=1)}
        )
    assert resume_abandoned(database, {"nightly": spec}) == 1
    assert len(runs) == 1
    with database.read_engine.connect() as connection:
        row = connection.execute(text("SELECT status, attempts FROM job_run")).one()
    assert tuple(row) == ("completed", 2)


def test_a_failing_job_is_recorded_as_failed(database):
    def broken(_context):  # type: ignore[no-untyped-def]
        raise RuntimeError("the feed was down")

    assert run_slot(database, JobSpec("sync", "0 3 * * *", broken), SLOT) is True
    with database.read_engine.connect() as connection:
        row = connection.execute(text("SELECT status, detail FROM job_run")).one()
    assert row[0] == "failed"
    assert "the feed was down" in row[1]


def test_every_replica_names_the_same_slot_in_the_school_timezone():
    trigger = CronTrigger.from_crontab("0 2 * * *", timezone="Europe/London")
    on_time = datetime(2026, 7, 1, 1, 0, 0, 300_000, tzinfo=UTC)  # 02:00 BST
    late = on_time + timedelta(minutes=40)
    early_clock = on_time - timedelta(seconds=20)
    assert slot_for(trigger, on_time) == slot_for(trigger, late) == slot_for(trigger, early_clock)
    assert slot_for(trigger, on_time) == "2026-07-01T01:00:00+00:00"
    winter = datetime(2026, 12, 1, 2, 0, 5, tzinfo=UTC)  # 02:00 GMT
    assert slot_for(trigger, winter) == "2026-12-01T02:00:00+00:00"


def test_the_scheduler_switch(settings, database):
    from mdm.app import create_app

    assert create_app(settings.model_copy(update={"scheduler": "off"}), database).state.scheduler is None
    app = create_app(settings.model_copy(update={"scheduler": "on"}), database)
    names = sorted(app.state.scheduler.specs)
    assert names == [
        "advance-open-exits",
        "apple-inventory",
        "apple-push",
        "apple-push-certificate-expiry",
        "compliance-nightly",
        "deliver-webhooks",
        "forget-dead-enrolment-links",
        "prune-job-runs",
        "prune-webhook-deliveries",
        "purge-stale-nonces",
        "start-due-exits",
        "sync-os-releases",
    ]


def test_housekeeping_forgets_dead_links_and_stale_nonces(client, auth, database):
    from enrollment.jobs import forget_dead_enrolment_links
    from mdm.channel.agent.jobs import purge_stale_nonces
    from mdm.scheduler import JobContext

    live = client.post("/api/v1/enrollment-tokens", json={"category": "authorised"}, headers=auth(Role.admin)).json()
    dead = client.post("/api/v1/enrollment-tokens", json={"category": "authorised"}, headers=auth(Role.admin)).json()
    with database.write_engine.begin() as connection:
        connection.execute(
            text("UPDATE enrollment_token SET expires_at = '2020-01-01 00:00:00' WHERE id = :id"), {"id": dead["id"]}
        )
        connection.execute(
            text(
                "INSERT INTO device (id, platform, category, state, held, compliance_status, compliance_failures, "
                "created_at, updated_at) VALUES ('d1', 'ios', 'authorised', 'enrolled', false, 'unknown', '[]', "
                ":now, :now)"
            ),
            {"now": datetime.now(UTC)},
        )
        connection.execute(text("INSERT INTO device_nonce VALUES ('d1', 'old-nonce-000000', '2020-01-01 00:00:00')"))
    context = JobContext(database, "housekeeping", SLOT, "test", timedelta(minutes=1))
    assert forget_dead_enrolment_links(context) == "forgot 1 enrolment link(s)"
    assert purge_stale_nonces(context) == "purged 1 nonce(s)"
    with database.read_engine.connect() as connection:
        sealed = dict(connection.execute(text("SELECT id, sealed_token IS NOT NULL FROM enrollment_token")).all())
    assert sealed == {live["id"]: True, dead["id"]: False}
