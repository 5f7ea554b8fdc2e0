"""The check-in hot path over real HTTP, beside a bare endpoint of the same server in the same run.

A real `mdm serve` (one process, or `--workers N`) on a fresh database. Converged devices running the
reference agent check in from many threads through one pooled HTTP client; the same threads first hit
`/healthz`, which does no database work, so the ratio between the two says how much of the server's
capacity a check-in costs, whatever the machine. Figures: unchanged check-ins (the common case),
changed check-ins (60 apps, one drifted each time), enrolments (CSR to certificate to first commands)
and Apple's idle connects (bench/apple.py), each with the server CPU it cost per request.

The school's catalogue has one app, required for the devices' category, that each device installs
at enrolment (its other 59 apps are the family's). The changed check-ins drift that school app, so
each one reconciles the device: the dearer case. A family app drifting is stored without a
reconcile (the plan reads only catalogue apps) and is shown beside it, for reference.
"""

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import apple
from bench.databases import fresh_database
from bench.limits import at_least, at_most, figure
from bench.server import Server, admin_token, enrolment_token, serving
from mdm.agent import AgentClient, AgentState
from mdm.agent.inventory import App
from mdm.migrate import upgrade

THREADS = 16
APPS_PER_DEVICE = 60
CATEGORY = "school_shared"
SCHOOL_APP = "uk.sch.bench.maths"


@dataclass
class Load:
    """What one timed phase did: completed calls, their latencies, and the errors by kind."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    server_cpu_seconds: float = float("nan")

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000 if ordered else float("nan")

    @property
    def server_cpu_ms(self) -> float:
        """Server CPU per completed call."""
        return self.server_cpu_seconds * 1000 / len(self.latencies) if self.latencies else float("nan")

    def line(self, name: str) -> str:
        errors = f", errors {self.errors}" if self.errors else ""
        return (
            f"{name}: {self.rate:,.0f}/s, p50 {self.percentile(0.5):.1f} ms, p95 {self.percentile(0.95):.1f} ms, "
            f"p99 {self.percentile(0.99):.1f} ms, server CPU {self.server_cpu_ms:.2f} ms a call{errors}"
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


def new_device(http: httpx.Client, url: str, folder: Path, serial: str, apps: int) -> AgentClient:
    state = AgentState.load(folder / serial)
    state.inventory.os_version, state.inventory.passcode_set, state.inventory.encrypted = "17.5.1", True, True
    state.inventory.apps = [App(f"com.example.family{n}", "1.0", managed=False) for n in range(apps)]
    return AgentClient(url, state, http=http)


def measured(server: Server, workers: list[Callable[[], None]], seconds: float) -> Load:
    """`hammer`, with the server CPU the phase cost."""
    before = server.cpu_seconds()
    load = hammer(workers, seconds)
    load.server_cpu_seconds = server.cpu_seconds() - before
    return load


def run(database_url: str | None, seconds: float = 10.0, workers: int = 1, threads: int = THREADS) -> None:
    with tempfile.TemporaryDirectory() as name, fresh_database(database_url, Path(name)) as url:
        folder = Path(name)
        upgrade(url)
        admin = admin_token(folder, url)
        limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
        with serving(folder, url, workers) as server, httpx.Client(limits=limits, timeout=30) as http:
            base = server.url
            school_app(http, base, admin)
            token = enrolment_token(http, base, admin, uses=100_000, category=CATEGORY)
            devices = [new_device(http, base, folder, f"BENCH{n:05d}", APPS_PER_DEVICE - 1) for n in range(threads)]
            for device in devices:
                device.enroll(token, {"serial": device.state.state_dir.name, "platform": "ipados"}, True)
                device.converge()  # installs the school app: 60 apps
            # A category the school app is not required for: an idle connect finds an empty queue.
            ipad_token = enrolment_token(http, base, admin, uses=threads, category="authorised")
            with httpx.Client(base_url=base, timeout=30) as setup:
                ipads = apple.enrolled_ipads(url, folder / "data", setup, ipad_token, threads)
            healthz = measured(server, [lambda: http.get(f"{base}/healthz").raise_for_status()] * threads, seconds)
            unchanged = measured(server, [device.checkin for device in devices], seconds)
            changed = measured(
                server, [_drifting(device, SCHOOL_APP, below_minimum=True) for device in devices], seconds
            )
            family = measured(server, [_drifting(device, "com.example.family0") for device in devices], seconds)
            enrolled = measured(server, [_enrolling(http, base, folder, token, n) for n in range(threads)], seconds)
            idle = measured(server, [apple.idle_connect(http, ipad) for ipad in ipads], seconds)
        show(healthz, unchanged, changed, family, enrolled, idle, workers)


def school_app(http: httpx.Client, base: str, admin: str) -> None:
    """The catalogue's one app, free and required for the benchmark's devices."""
    body = {
        "identifier": SCHOOL_APP,
        "name": "Maths",
        "platform": "ios",
        "licence": "free",
        "min_version": "1.0",
        "required_for": [CATEGORY],
    }
    http.post(f"{base}/api/v1/apps", json=body, headers={"Authorization": f"Bearer {admin}"}).raise_for_status()


def show(healthz: Load, unchanged: Load, changed: Load, family: Load, enrolled: Load, idle: Load, workers: int) -> None:
    """The phases' lines, then each figure beside its limit (issue 12)."""
    for load, name in (
        (healthz, "bare /healthz"),
        (unchanged, "unchanged check-ins"),
        (changed, f"changed check-ins ({APPS_PER_DEVICE} apps, the school app below its minimum and back)"),
        (family, f"changed check-ins ({APPS_PER_DEVICE} apps, a family app drifted)"),
        (enrolled, "enrolments (CSR to certificate to first commands)"),
        (idle, "Apple idle connects (empty queue)"),
    ):
        print(load.line(name))
    share = unchanged.rate / healthz.rate
    server = f"{workers} worker{'s' if workers > 1 else ''}"
    figure(f"bare /healthz ({server})", healthz.rate, "/s")
    figure("server CPU per /healthz", healthz.server_cpu_ms, " ms")
    figure("unchanged check-ins", unchanged.rate, "/s", at_least(1000))
    figure("unchanged check-ins, share of /healthz", share, "", at_least(0.40))
    figure("unchanged check-ins, p99", unchanged.percentile(0.99), " ms")
    figure("server CPU per unchanged check-in", unchanged.server_cpu_ms, " ms")
    figure("changed check-ins", changed.rate, "/s", at_least(300))
    figure("server CPU per changed check-in", changed.server_cpu_ms, " ms")
    figure("changed check-ins, a family app drifted (no reconcile)", family.rate, "/s")
    figure("enrolments", enrolled.rate, "/s", at_least(200))
    figure("Apple idle connects", idle.rate, "/s")
    # "The same ratio as the agent": the agent's target share of /healthz, not whatever it reached today.
    figure("Apple idle connects, share of /healthz", idle.rate / healthz.rate, "", at_least(0.40))
    figure("server CPU per Apple idle connect", idle.server_cpu_ms, " ms", at_most(1.0))
    errors = sum(sum(load.errors.values()) for load in (healthz, unchanged, changed, family, enrolled, idle))
    figure("errors in every phase", errors, "", at_most(0))


def _drifting(device: AgentClient, identifier: str, below_minimum: bool = False) -> Callable[[], None]:
    """Each check-in reports the app `identifier` at a new version (at or above the school's minimum).

    `below_minimum`: every other check-in reports it at 0.9, under the school's 1.0, and the next back
    above: a drift the plan acts on at each check-in. An update past the minimum moves no plan, so the
    service reconciles nothing for it.
    """
    counter = iter(range(10**9))
    app = next(app for app in device.state.inventory.apps if app.identifier == identifier)

    def work() -> None:
        n = next(counter)
        app.version = "0.9" if below_minimum and n % 2 else f"1.{n}"
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
