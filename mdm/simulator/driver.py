"""Many simulated devices at once: one asyncio loop, one pooled httpx.AsyncClient, at most N requests in flight.

Each device is the reference agent's own code (mdm.agent.protocol builds and signs its requests and reads
the answers; mdm.agent.inventory applies commands) with its state in memory. Only the sending differs
from the blocking agent, so the load a server sees is exactly what real agents would send.

A 429 is the server asking the fleet to slow down: the request is built again (a fresh nonce, since a
nonce is never accepted twice) and sent after the Retry-After, a few times, before it counts as an error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mdm.agent.protocol import AgentError, AgentProtocol, checked
from mdm.agent.state import MemoryState
from mdm.simulator.fleet import DEFAULT_SEED, STARTS_DRIFTED, DeviceSpec, apply_drift, starting_inventory
from mdm.simulator.stats import CHECKIN, ENROL, RESULT, Stats

DEFAULT_CONCURRENCY = 32
RETRIES_AFTER_429 = 3
# A Retry-After longer than this is the server saying "not today": better an error than a hung run.
MAX_RETRY_WAIT_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 60.0


@dataclass
class SimulatedDevice:
    spec: DeviceSpec
    protocol: AgentProtocol
    # Management ended (wiped or released): the device does nothing more for the school.
    unenrolled: bool = False

    @property
    def state(self) -> MemoryState:
        return self.protocol.state  # type: ignore[return-value]

    @property
    def enrolled(self) -> bool:
        return self.state.enrolled and not self.unenrolled


@dataclass
class Fleet:
    """The devices of one simulation, their shared client, and what was measured."""

    url: str
    http: httpx.AsyncClient
    concurrency: int = DEFAULT_CONCURRENCY
    seed: int = DEFAULT_SEED
    stats: Stats = field(default_factory=Stats)
    devices: list[SimulatedDevice] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._in_flight = asyncio.Semaphore(self.concurrency)

    def add(self, specs: Iterable[DeviceSpec]) -> None:
        for spec in specs:
            state = MemoryState(Path(spec.serial), inventory=starting_inventory(spec, self.seed))
            self.devices.append(SimulatedDevice(spec, AgentProtocol(self.url, state, self.http.build_request)))
            self.stats.devices += 1
            if spec.drift in STARTS_DRIFTED:
                self.stats.drift(spec.serial, spec.drift)

    # --- Phases -----------------------------------------------------------------------------------

    async def enrol(self) -> None:
        await asyncio.gather(*(self._enrol(device) for device in self.devices if not device.state.enrolled))

    async def run(self, rounds: int | None, checkin_every: float, duration: float | None = None) -> None:
        """Each enrolled device checks in `rounds` times (or until `duration` s), every `checkin_every` s.

        The devices' first check-ins are spread evenly over one interval, as a fleet's are over a day;
        with an interval of 0 every device checks in again as soon as its last round is done.
        """
        started = time.monotonic()
        devices = [device for device in self.devices if device.enrolled]
        await asyncio.gather(
            *(
                self._schedule(
                    device, started + checkin_every * n / max(len(devices), 1), rounds, checkin_every, duration
                )
                for n, device in enumerate(devices)
            )
        )

    async def round(self, devices: Iterable[SimulatedDevice] | None = None) -> None:
        """One check-in for each of `devices` (default: every enrolled one), all at once."""
        await asyncio.gather(
            *(self._round(device) for device in (self.devices if devices is None else devices) if device.enrolled)
        )

    # --- One device -------------------------------------------------------------------------------

    async def _enrol(self, device: SimulatedDevice) -> None:
        spec = device.spec
        if spec.token is None:
            self.stats.error("enrol without a token")
            return
        details = {
            "serial": spec.serial,
            "platform": spec.platform.value,
            "model": spec.model,
            "os_version": device.state.inventory.os_version,
            "name": f"{spec.kind} {spec.index + 1}",
        }
        token = spec.token
        response = await self._send(ENROL, lambda: device.protocol.enrolment(token, details, spec.accepts_aup))
        if response is None:
            return
        try:
            device.protocol.accept_enrolment(response, details)
        except AgentError as exc:
            self.stats.error(f"enrol answer: {exc.detail}")
            return
        self.stats.enrolled += 1

    async def _schedule(
        self, device: SimulatedDevice, first: float, rounds: int | None, every: float, duration: float | None
    ) -> None:
        deadline = None if duration is None else time.monotonic() + duration
        due, done = first, 0
        while device.enrolled and (rounds is None or done < rounds):
            now = time.monotonic()
            if deadline is not None and max(now, due) >= deadline:
                return
            if due > now:
                await asyncio.sleep(due - now)
            await self._round(device)
            done += 1
            due += every

    async def _round(self, device: SimulatedDevice) -> None:
        """Check in, apply each command and report it, then let the device's user drift again."""
        response = await self._send(CHECKIN, device.protocol.checkin)
        if response is None:
            return
        try:
            commands = device.protocol.read_checkin(response)
        except AgentError as exc:
            self.stats.error(f"check-in answer: {exc.detail}")
            return
        for command in commands:
            done = device.protocol.apply(command)
            self.stats.commands[done.outcome.status] += 1
            outcome = done.outcome
            await self._send(RESULT, lambda: device.protocol.result(done.id, outcome.status, outcome.detail))  # noqa: B023
            if done.ends_management:
                device.state.forget_identity()
                device.unenrolled = True
                return
        if apply_drift(device.state.inventory, device.spec) and device.spec.drift:
            self.stats.drift(device.spec.serial, device.spec.drift)

    async def _send(self, kind: str, build: Callable[[], httpx.Request]) -> httpx.Response | None:
        """Send what `build` makes; the answer when it succeeded, else None with the error counted."""
        for attempt in range(RETRIES_AFTER_429 + 1):
            request = build()
            async with self._in_flight:
                started = time.monotonic()
                try:
                    response = await self.http.send(request)
                except httpx.RequestError as exc:
                    self.stats.error(f"network {type(exc).__name__}")
                    return None
                finished = time.monotonic()
            try:
                return _record(self.stats, kind, started, finished, checked(response))
            except AgentError as exc:
                wait = exc.retry_after if exc.retry_after is not None else 1.0
                if exc.status == 429 and attempt < RETRIES_AFTER_429 and wait <= MAX_RETRY_WAIT_SECONDS:
                    self.stats.throttled += 1
                    await asyncio.sleep(wait)
                    continue
                self.stats.record(kind, started, finished)
                self.stats.error(f"{kind} {exc.status}")
                return None
        return None


def _record(stats: Stats, kind: str, started: float, finished: float, response: httpx.Response) -> httpx.Response:
    stats.record(kind, started, finished)
    return response


def async_client(concurrency: int) -> httpx.AsyncClient:
    """One pooled client for the whole fleet, with as many connections as requests may be in flight."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_SECONDS)
