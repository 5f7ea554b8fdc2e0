"""The check-in hot path over real HTTP, beside a bare endpoint of the same server in the same run.

A real `mdm serve` (one process) on a fresh database. Converged devices running the reference agent
check in from many threads through one pooled HTTP client; the same threads then hit `/healthz`, which
does no database work, so the ratio between the two says how much of the server's capacity a
check-in costs, whatever the machine. Figures: unchanged check-ins (the common case), changed
check-ins (60 apps, one drifted each time), and enrolments (CSR to certificate to first commands).
"""

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.databases import fresh_database
from mdm import local_server
from mdm.agent import AgentClient, AgentState
from mdm.agent.inventory import App
from mdm.migrate import upgrade

THREADS = 16
APPS_PER_DEVICE = 60


@dataclass
class Load:
    """What one timed phase did: completed calls, their latencies, and the errors by kind."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000 if ordered else float("nan")

    def line(self, name: str) -> str:
        errors = f", errors {self.errors}" if self.errors else ""
        return (
            f"{name}: {self.rate:,.0f}/s, p50 {self.percentile(0.5):.1f} ms, p95 {self.percentile(0.95):.1f} ms, "
            f"p99 {self.percentile(0.99):.1f} ms{errors}"
        )


def hammer(workers: list[Callable[[], None]], seconds: float) -> Load:
    """Each worker called in a loop on its own thread for `seconds`."""
    load = Load(seconds)
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def loop(work: Callable[[], None]) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                work()
            except Exception as exc:  # counted and shown: a benchmark that hides errors measures nothing
                with lock:
                    load.errors[type(exc).__name__] = load.errors.get(type(exc).__name__, 0) + 1
                continue
            with lock:
                load.latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=loop, args=(work,)) for work in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return load


@contextmanager
def serving(folder: Path, database_url: str) -> Iterator[str]:
    port = local_server.free_port()
    # The benchmark is one address enrolling hundreds of devices a second; its logs would be noise.
    quiet = {"MDM_RATE_LIMITS": "off", "MDM_LOG_LEVEL": "WARNING"}
    process = local_server.start(folder / "data", database_url, port, folder / "server.log", quiet)
    try:
        url = f"http://127.0.0.1:{port}"
        local_server.wait_until_ready(url, process)
        yield url
    finally:
        local_server.stop(process)


def admin_token(folder: Path, database_url: str) -> str:
    env = {**os.environ, "MDM_DATA_DIR": str(folder / "data"), "MDM_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "mdm", "token", "create", "--role", "admin", "--name", "bench"]
    return subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout.strip()


def enrolment_token(http: httpx.Client, url: str, admin: str, uses: int) -> str:
    body = {"category": "school_shared", "max_uses": uses}
    response = http.post(f"{url}/api/v1/enrollment-tokens", json=body, headers={"Authorization": f"Bearer {admin}"})
    response.raise_for_status()
    return str(response.json()["token"])


def new_device(http: httpx.Client, url: str, folder: Path, serial: str, apps: int) -> AgentClient:
    state = AgentState.load(folder / serial)
    state.inventory.os_version, state.inventory.passcode_set, state.inventory.encrypted = "17.5.1", True, True
    state.inventory.apps = [App(f"com.example.family{n}", "1.0", managed=False) for n in range(apps)]
    return AgentClient(url, state, http=http)


def run(database_url: str | None, seconds: float = 10.0) -> None:
    with tempfile.TemporaryDirectory() as name, fresh_database(database_url, Path(name)) as url:
        folder = Path(name)
        upgrade(url)
        admin = admin_token(folder, url)
        limits = httpx.Limits(max_connections=THREADS, max_keepalive_connections=THREADS)
        with serving(folder, url) as base, httpx.Client(limits=limits, timeout=30) as http:
            token = enrolment_token(http, base, admin, uses=100_000)
            devices = [new_device(http, base, folder, f"BENCH{n:05d}", APPS_PER_DEVICE) for n in range(THREADS)]
            for device in devices:
                device.enroll(token, {"serial": device.state.state_dir.name, "platform": "ipados"}, True)
                device.converge()
            healthz = hammer([lambda: http.get(f"{base}/healthz").raise_for_status()] * THREADS, seconds)
            unchanged = hammer([device.checkin for device in devices], seconds)
            changed = hammer([_drifting(device) for device in devices], seconds)
            enrolled = hammer([_enrolling(http, base, folder, token, n) for n in range(THREADS)], seconds)
        print(healthz.line("bare /healthz"))
        print(unchanged.line("unchanged check-ins") + f" ({unchanged.rate / healthz.rate:.2f} of /healthz)")
        print(changed.line(f"changed check-ins ({APPS_PER_DEVICE} apps, one drifted)"))
        print(enrolled.line("enrolments (CSR to certificate to first commands)"))


def _drifting(device: AgentClient) -> Callable[[], None]:
    """Each check-in reports one of its apps at a new version: the inventory changed, the device reconciles."""
    counter = iter(range(10**9))

    def work() -> None:
        app = device.state.inventory.apps[0]
        app.version = f"1.{next(counter)}"
        device.checkin()

    return work


def _enrolling(http: httpx.Client, base: str, folder: Path, token: str, worker: int) -> Callable[[], None]:
    counter = iter(range(10**9))

    def work() -> None:
        serial = f"NEW{worker:02d}-{next(counter):06d}"
        device = new_device(http, base, folder / "enrolled", serial, apps=0)
        device.enroll(token, {"serial": serial, "platform": "ipados"}, True)
        device.checkin()  # the first commands

    return work
