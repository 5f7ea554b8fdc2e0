"""A morning storm: N converged agent devices, each checking in once at a random moment of a window.

The issue's storm is 20,000 devices within 5 minutes, p99 under 500 ms and no errors: a school's fleet
waking after half term. The devices are the fleet simulator's (mdm.simulator: the reference agent's own
protocol code on one asyncio loop, a realistic mix of kinds, about 60 apps each). Each device's arrival
is drawn uniformly over the window (seeded), so bursts come and go as they do in a real morning, and
its latency is measured from its arrival, so time spent waiting for a free connection counts too.

Enrolling 20,000 devices through the API would take over ten minutes at today's rate, so the devices
are seeded instead, as if they had enrolled and checked in yesterday: each one's key and CSR are made
here, the school CA issues its certificate (as `POST /api/v1/enroll` has it issued), the devices and
certificates are inserted set-based, and each inventory is stored through the inventory service as its
last check-in would have stored it. The seeding skips the enrolment token and its use count, the
enrolment's audit record and webhook, and the reconcile at enrolment: a fresh database has no profiles
or apps, so nothing is desired and nothing would have been queued. Each check-in in the storm is thus
an unchanged one with no commands due, the morning's common case; the benchmark counts any that the
server took as a change, which would mean the seeding missed something.
"""

import asyncio
import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, insert, select

from bench.databases import fresh_database, runtime_for
from bench.limits import at_most, figure
from bench.server import Server, serving
from mdm.agent.protocol import build_csr
from mdm.bootstrap import Runtime
from mdm.categories import PERSONAL
from mdm.database import refresh_statistics
from mdm.devices.models import Device, DeviceCertificate
from mdm.ids import new_id, utcnow
from mdm.inventory.models import DeviceInventory, Inventory
from mdm.inventory.service import store_inventory
from mdm.migrate import upgrade
from mdm.simulator.driver import Fleet, SimulatedDevice, async_client
from mdm.simulator.fleet import plan_fleet
from mdm.simulator.run import showing_progress
from mdm.simulator.stats import percentile

DEVICES = 20_000
WINDOW_SECONDS = 300.0
# Enough connections that the client is never the queue: 67 arrivals a second at 20,000 in 5 minutes.
CONCURRENCY = 128
SEED_BATCH = 1000
ARRIVALS_SEED = 12
P99_MS = 500


SEEDED_TABLES = ("device", "device_certificate", "device_inventory", "device_app", "device_profile")


def seed(runtime: Runtime, devices: list[SimulatedDevice]) -> None:
    """Each device enrolled and its inventory stored, as yesterday's enrolment and check-in left them."""
    for start in range(0, len(devices), SEED_BATCH):
        batch = devices[start : start + SEED_BATCH]
        now = utcnow()
        rows, certificates = [], []
        for device in batch:
            rows.append(_device_row(device, new_id(), now))
            certificates.append(_identity(runtime, device, rows[-1]["id"], now))
        with runtime.database.writing() as session:
            session.execute(insert(Device), rows)
            session.execute(insert(DeviceCertificate), certificates)
            for device in batch:
                inventory = Inventory.model_validate(device.state.inventory.to_json())
                store_inventory(session, device.state.device_id or "", inventory, now - timedelta(days=1))
    # A school's devices arrive over weeks and autovacuum keeps PostgreSQL's statistics up with them.
    # Seeded in a minute, the planner would still think the tables empty when the storm starts.
    with runtime.database.writing() as session:
        refresh_statistics(session, *SEEDED_TABLES)


def _device_row(device: SimulatedDevice, device_id: str, now: object) -> dict[str, object]:
    spec = device.spec
    return {
        "id": device_id,
        "serial": spec.serial,
        "platform": spec.platform.value,
        "model": spec.model,
        "os_version": device.state.inventory.os_version,
        "category": spec.category.value,
        "state": "enrolled",
        "held": False,
        "compliance_status": "unknown",
        "compliance_failures": [],
        "enrolled_at": now,
        "aup_accepted_at": now if spec.category in PERSONAL else None,
        "created_at": now,
        "updated_at": now,
    }


def _identity(runtime: Runtime, device: SimulatedDevice, device_id: str, now: object) -> dict[str, object]:
    """The device's key, and its certificate from the school CA; the device holds what enrolment gives it."""
    key = ec.generate_private_key(ec.SECP256R1())
    issued = runtime.ca.issue_device_certificate(
        build_csr(key, device.spec.serial), device_id, runtime.settings.device_certificate_days
    )
    state = device.state
    state.private_key, state.device_id, state.certificate_pem = key, device_id, issued.pem
    state.ca_certificates = [runtime.ca.certificate_pem]
    state.inventory.enrolled = True
    return {
        "serial_number": format(issued.serial_number, "x"),
        "device_id": device_id,
        "certificate_pem": issued.pem,
        "fingerprint_sha256": issued.fingerprint_sha256,
        "issued_at": now,
        "not_after": issued.not_after,
    }


async def storm(fleet: Fleet, window: float) -> tuple[list[float], float]:
    """Every device checks in once at its arrival; the latencies from arrival, and when the last one finished."""
    rng = random.Random(ARRIVALS_SEED)
    latencies: list[float] = []
    started = time.monotonic()

    async def arrive(device: SimulatedDevice, at: float) -> None:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        arrived = time.monotonic()
        await fleet.round([device])
        latencies.append(time.monotonic() - arrived)

    await asyncio.gather(*(arrive(device, rng.uniform(0, window)) for device in fleet.devices))
    return latencies, time.monotonic() - started


async def _run(server: Server, runtime: Runtime, devices: int, window: float) -> tuple[Fleet, list[float], float]:
    async with async_client(CONCURRENCY) as http:
        fleet = Fleet(server.url, http, concurrency=CONCURRENCY)
        fleet.add(plan_fleet(devices, drift_percent=0))
        began = time.perf_counter()
        seed(runtime, fleet.devices)
        fleet.stats.enrolled = devices
        print(f"storm: {devices:,} devices seeded in {time.perf_counter() - began:.0f} s", file=sys.stderr)
        async with showing_progress(fleet.stats, sys.stderr):
            latencies, elapsed = await storm(fleet, window)
    return fleet, latencies, elapsed


def run(database_url: str | None, devices: int = DEVICES, window: float = WINDOW_SECONDS, workers: int = 1) -> None:
    with tempfile.TemporaryDirectory() as name, fresh_database(database_url, Path(name)) as url:
        folder = Path(name)
        upgrade(url)
        runtime = runtime_for(url, folder / "data")
        try:
            with serving(folder, url, workers) as server:
                cpu = server.cpu_seconds()
                fleet, latencies, elapsed = asyncio.run(_run(server, runtime, devices, window))
                cpu = server.cpu_seconds() - cpu
            changed = _changed_since_seeding(runtime)
        finally:
            runtime.close()
    show(fleet, latencies, elapsed, window, cpu, changed, workers)


def _changed_since_seeding(runtime: Runtime) -> int:
    """Inventories the storm's check-ins stored anew: none, when the seeding left what the devices report."""
    since = utcnow() - timedelta(hours=1)
    with runtime.database.reading() as session:
        query = select(func.count()).select_from(DeviceInventory).where(DeviceInventory.reported_at > since)  # type: ignore[arg-type,operator]
        return int(session.execute(query).scalar_one())


def show(
    fleet: Fleet, latencies: list[float], elapsed: float, window: float, cpu: float, changed: int, workers: int
) -> None:
    devices = fleet.stats.devices
    ms = [latency * 1000 for latency in latencies]
    print(
        f"storm: {devices:,} devices over {window:.0f} s, {workers} server worker(s) "
        f"(the issue's storm: {DEVICES:,} over {WINDOW_SECONDS:.0f} s); "
        f"{changed} first check-in(s) changed a stored inventory (0 expected)"
    )
    if fleet.stats.errors:
        print(f"storm errors: {dict(fleet.stats.errors.most_common())}")
    checkins = len(fleet.stats.latencies["check-in"])
    figure("storm, check-ins completed", checkins, f" of {devices:,}")
    figure("storm, errors", fleet.stats.error_count, "", at_most(0))
    # A device arriving at the window's last moment still has its P99_MS to be answered.
    figure("storm, every device done within", elapsed, " s", at_most(window + P99_MS / 1000))
    figure("storm, achieved rate", checkins / elapsed, "/s")
    figure("storm, latency p50", percentile(ms, 0.50), " ms")
    figure("storm, latency p95", percentile(ms, 0.95), " ms")
    figure("storm, latency p99", percentile(ms, 0.99), " ms", at_most(P99_MS, strict=True))
    figure("storm, server CPU per check-in", cpu * 1000 / checkins if checkins else float("nan"), " ms")
