"""Daily pruning of finished job runs and delivered webhook rows: old history goes, live work never does."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from mdm.actor import Role
from mdm.app import scheduled_jobs
from mdm.audit.service import verify_chain
from mdm.scheduler import run_slot

SLOT = "2026-11-30T03:20:00+00:00"
NOW = datetime.now(UTC)


@pytest.fixture
def settings(settings):  # type: ignore[no-untyped-def]
    # The webhook below is never called; the allow-list spares its made-up host a DNS lookup.
    return settings.model_copy(update={"webhook_allowed_hosts": "receiver.example"})


def _days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def _spec(settings, name: str):  # type: ignore[no-untyped-def]
    return next(spec for spec in scheduled_jobs(settings) if spec.name == name)


def _stored(database, moment: datetime | None) -> datetime | None:  # type: ignore[no-untyped-def]
    # Raw SQL bypasses UtcDateTime: SQLite keeps naive UTC, PostgreSQL takes aware times.
    return moment.replace(tzinfo=None) if moment is not None and database.dialect == "sqlite" else moment


def _add_run(database, job: str, slot: str, status: str, started: datetime, finished: datetime | None) -> None:  # type: ignore[no-untyped-def]
    with database.write_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO job_run (job, slot, status, owner, attempts, started_at, lease_expires_at, finished_at) "
                "VALUES (:job, :slot, :status, 'host:1', 1, :started, :lease, :finished)"
            ),
            {
                "job": job,
                "slot": slot,
                "status": status,
                "started": _stored(database, started),
                "lease": _stored(database, started + timedelta(minutes=5)),
                "finished": _stored(database, finished),
            },
        )


def _runs(database) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    with database.read_engine.connect() as connection:
        return {(job, slot) for job, slot in connection.execute(text("SELECT job, slot FROM job_run"))}


def _audit(database, object_type: str) -> list[dict]:  # type: ignore[no-untyped-def]
    with database.read_engine.connect() as connection:
        rows = connection.execute(
            text("SELECT action, summary FROM audit_event WHERE object_type = :t ORDER BY seq"), {"t": object_type}
        ).all()
    # Raw SQL reads JSON back as text on SQLite and as a dict on PostgreSQL.
    return [{"action": action, "summary": json.loads(s) if isinstance(s, str) else s} for action, s in rows]


def test_old_finished_job_runs_are_pruned_and_running_ones_kept(settings, database):
    _add_run(database, "compliance-nightly", "old-completed", "completed", _days_ago(120), _days_ago(120))
    _add_run(database, "sync-os-releases", "old-failed", "failed", _days_ago(95), _days_ago(95))
    # A run whose replica died long ago is still "running": the watcher may yet take it over.
    _add_run(database, "start-due-exits", "old-running", "running", _days_ago(200), None)
    _add_run(database, "compliance-nightly", "recent", "completed", _days_ago(89), _days_ago(89))

    assert run_slot(database, _spec(settings, "prune-job-runs"), SLOT) is True

    assert _runs(database) == {
        ("start-due-exits", "old-running"),
        ("compliance-nightly", "recent"),
        ("prune-job-runs", SLOT),
    }
    with database.read_engine.connect() as connection:
        status, detail = connection.execute(
            text("SELECT status, detail FROM job_run WHERE job = 'prune-job-runs'")
        ).one()
    assert (status, detail) == ("completed", "deleted 2 finished job run(s) older than 90 day(s)")
    [event] = _audit(database, "job_run")
    assert event["action"] == "housekeeping.prune"
    assert event["summary"]["deleted"] == 2
    with database.reading() as session:
        assert verify_chain(session).ok


def test_the_retention_comes_from_the_setting(settings, database):
    settings = settings.model_copy(update={"retention_days": 30})
    _add_run(database, "compliance-nightly", "forty-days", "completed", _days_ago(40), _days_ago(40))
    _add_run(database, "compliance-nightly", "twenty-days", "completed", _days_ago(20), _days_ago(20))
    run_slot(database, _spec(settings, "prune-job-runs"), SLOT)
    assert ("compliance-nightly", "forty-days") not in _runs(database)
    assert ("compliance-nightly", "twenty-days") in _runs(database)


def test_the_retention_setting_is_read_from_the_environment(monkeypatch):
    from mdm.settings import Settings

    monkeypatch.setenv("MDM_RETENTION_DAYS", "14")
    assert Settings().retention_days == 14
    monkeypatch.setenv("MDM_RETENTION_DAYS", "0")
    with pytest.raises(ValueError, match="retention_days"):
        Settings()


def test_nothing_to_prune_writes_no_audit_event(settings, database):
    run_slot(database, _spec(settings, "prune-job-runs"), SLOT)
    assert _audit(database, "job_run") == []


def test_a_big_backlog_is_pruned_in_batches(settings, database, monkeypatch):
    import mdm.housekeeping

    monkeypatch.setattr(mdm.housekeeping, "BATCH_SIZE", 2)
    for i in range(5):
        _add_run(database, "deliver-webhooks", f"old-{i}", "completed", _days_ago(100), _days_ago(100))
    run_slot(database, _spec(settings, "prune-job-runs"), SLOT)
    assert _runs(database) == {("prune-job-runs", SLOT)}
    assert [event["summary"]["deleted"] for event in _audit(database, "job_run")] == [2, 2, 1]


# --- The webhook outbox ------------------------------------------------------------------------------


def _add_delivery(database, webhook_id: str, name: str, status: str, created: datetime, delivered: datetime | None):  # type: ignore[no-untyped-def]
    with database.write_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO webhook_delivery (id, webhook_id, event_id, event_type, body, status, attempts, "
                "created_at, next_attempt_at, delivered_at) VALUES (:id, :webhook, :id, 'device.enrolled', '{}', "
                ":status, 1, :created, :next, :delivered)"
            ),
            {
                "id": name,
                "webhook": webhook_id,
                "status": status,
                "created": _stored(database, created),
                "next": _stored(database, created) if status == "pending" else None,
                "delivered": _stored(database, delivered),
            },
        )


def _deliveries(database) -> set[str]:  # type: ignore[no-untyped-def]
    with database.read_engine.connect() as connection:
        return {row[0] for row in connection.execute(text("SELECT id FROM webhook_delivery"))}


def test_old_delivered_webhook_rows_are_pruned_and_undelivered_ones_never(settings, database, client, auth):
    webhook = client.post(
        "/api/v1/webhooks",
        json={"url": "https://receiver.example/hook", "events": ["device.enrolled"]},
        headers=auth(Role.admin),
    ).json()
    _add_delivery(database, webhook["id"], "delivered-old", "delivered", _days_ago(100), _days_ago(100))
    _add_delivery(database, webhook["id"], "delivered-recent", "delivered", _days_ago(100), _days_ago(10))
    _add_delivery(database, webhook["id"], "pending-old", "pending", _days_ago(100), None)
    _add_delivery(database, webhook["id"], "failed-old", "failed", _days_ago(100), None)
    _add_delivery(database, webhook["id"], "cancelled-old", "cancelled", _days_ago(100), None)

    assert run_slot(database, _spec(settings, "prune-webhook-deliveries"), SLOT) is True

    assert _deliveries(database) == {"delivered-recent", "pending-old", "failed-old", "cancelled-old"}
    with database.read_engine.connect() as connection:
        detail = connection.execute(text("SELECT detail FROM job_run WHERE job = 'prune-webhook-deliveries'")).scalar()
    assert detail == "deleted 1 delivered webhook row(s) older than 90 day(s)"
    [event] = _audit(database, "webhook_delivery")
    assert (event["action"], event["summary"]["deleted"]) == ("housekeeping.prune", 1)
    # The delivery log an auditor reads no longer shows the pruned row, and nothing else changed.
    listed = client.get(f"/api/v1/webhooks/{webhook['id']}/deliveries", headers=auth(Role.auditor)).json()["items"]
    assert {item["id"] for item in listed} == {"delivered-recent", "pending-old", "failed-old", "cancelled-old"}


def test_the_pruning_jobs_run_daily(settings):
    crons = {spec.name: spec.cron for spec in scheduled_jobs(settings)}
    for name in ("prune-job-runs", "prune-webhook-deliveries"):
        minute, hour, *rest = crons[name].split()
        assert minute.isdigit(), crons[name]
        assert hour.isdigit(), crons[name]
        assert rest == ["*", "*", "*"], crons[name]
