"""The nightly run across replicas, with real processes: one run per slot, and a killed run taken over."""

import os
import subprocess
import sys
import time

from sqlalchemy import text

from bench.compliance import _fleet

SLOT = "2026-11-30T02:00:00+00:00"
LEASE = 10  # seconds: long enough for a second replica to start and find the claim still held
DEVICES = 12_000  # a run of a second or more, so the kill lands mid-way


def _env(settings, lease: int = 300) -> dict[str, str]:
    return {
        **os.environ,
        "MDM_DATA_DIR": str(settings.data_dir),
        "MDM_DATABASE_URL": settings.resolved_database_url,
        "MDM_JOB_LEASE_SECONDS": str(lease),
    }


def _replica(settings, *args: str, lease: int = 300) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mdm", "jobs", *args],
        env=_env(settings, lease),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _runs(database) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    with database.read_engine.connect() as connection:
        return [tuple(r) for r in connection.execute(text("SELECT status, devices_evaluated FROM compliance_run"))]


def test_two_replicas_fire_the_same_slot_and_one_run_happens(settings, database):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _fleet(database, 500)
    replicas = [_replica(settings, "run", "compliance-nightly", "--slot", SLOT) for _ in range(2)]
    outputs = [replica.communicate(timeout=120)[0] for replica in replicas]
    assert all(replica.returncode == 0 for replica in replicas)
    assert sorted("ran here" in out for out in outputs) == [False, True]
    assert _runs(database) == [("completed", 500)]
    with database.read_engine.connect() as connection:
        claims = connection.execute(text("SELECT status, attempts FROM job_run WHERE job = 'compliance-nightly'")).all()
    assert [tuple(c) for c in claims] == [("completed", 1)]


def test_a_run_killed_midway_is_taken_over_after_its_lease_and_finishes(settings, database):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _fleet(database, DEVICES)
    first = _replica(settings, "run", "compliance-nightly", "--slot", SLOT, lease=LEASE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until it is visibly working, then pull the plug
        with database.read_engine.connect() as connection:
            if connection.execute(text("SELECT count(*) FROM compliance_run WHERE status = 'running'")).scalar_one():
                break
        time.sleep(0.05)
    time.sleep(0.2)  # well inside a run of this size, however fast the machine
    first.kill()
    first.wait(timeout=10)
    assert _runs(database)[0][0] == "running"  # it died mid-run
    killed_at = time.monotonic()
    too_soon = _replica(settings, "run", "compliance-nightly", "--slot", SLOT, lease=LEASE)
    assert "claimed by another replica" in too_soon.communicate(timeout=60)[0]
    time.sleep(max(0.0, LEASE + 0.5 - (time.monotonic() - killed_at)))  # the dead replica's lease runs out
    watcher = _replica(settings, "resume", lease=LEASE)
    out = watcher.communicate(timeout=180)[0]
    assert watcher.returncode == 0, out
    assert "1 abandoned run(s) taken over" in out
    assert sorted(_runs(database)) == [("abandoned", 0), ("completed", DEVICES)]
    with database.read_engine.connect() as connection:
        claim = connection.execute(text("SELECT status, attempts FROM job_run WHERE job = 'compliance-nightly'")).one()
    assert tuple(claim) == ("completed", 2)
