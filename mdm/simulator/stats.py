"""What a simulation measured: request latencies by kind, counts, errors by kind, and the text a person reads.

Latencies are kept whole (a float per request) rather than in a histogram: a simulation is at most some
hundred thousand requests, and exact percentiles are what a benchmark beside its limit needs.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

# The requests a device makes, in the order a summary lists them.
ENROL, CHECKIN, RESULT = "enrol", "check-in", "result"
KINDS = (ENROL, CHECKIN, RESULT)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (0 when there are none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


@dataclass
class Stats:
    devices: int = 0
    enrolled: int = 0
    # Devices whose drift changed something, by kind: removing a school app from a phone that has none does not.
    drifting: Counter[str] = field(default_factory=Counter)
    drifted: set[str] = field(default_factory=set)
    commands: Counter[str] = field(default_factory=Counter)  # by outcome: acknowledged, error, not_now
    errors: Counter[str] = field(default_factory=Counter)  # "check-in 403", "network ReadTimeout"...
    throttled: int = 0
    latencies: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    # When each kind of request first started and last finished, for its rate.
    spans: dict[str, list[float]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def record(self, kind: str, started: float, finished: float) -> None:
        self.latencies[kind].append(finished - started)
        span = self.spans.setdefault(kind, [started, finished])
        span[0], span[1] = min(span[0], started), max(span[1], finished)

    def drift(self, serial: str, kind: str) -> None:
        if serial not in self.drifted:
            self.drifted.add(serial)
            self.drifting[kind] += 1

    def error(self, label: str) -> None:
        self.errors[label] += 1

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def rate(self, kind: str) -> float:
        """Requests of this kind per second, over the time from the first one sent to the last answered."""
        span = self.spans.get(kind)
        if not span or span[1] <= span[0]:
            return 0.0
        return len(self.latencies[kind]) / (span[1] - span[0])

    def seconds(self, kind: str) -> float:
        span = self.spans.get(kind)
        return span[1] - span[0] if span else 0.0

    def progress_line(self) -> str:
        elapsed = time.monotonic() - self.started
        checkins = len(self.latencies[CHECKIN])
        return (
            f"progress: {elapsed:5.1f} s  enrolled {self.enrolled}/{self.devices}  check-ins {checkins} "
            f"({checkins / elapsed if elapsed else 0:.0f}/s)  commands {sum(self.commands.values())}  "
            f"errors {self.error_count}"
        )

    def summary(self) -> list[str]:
        """The account printed at the end: counts, then each kind's rate and latency, then errors."""
        commands = ", ".join(f"{count} {outcome}" for outcome, count in sorted(self.commands.items())) or "none"
        drifting = ", ".join(f"{kind} {count}" for kind, count in sorted(self.drifting.items()))
        lines = [
            f"devices: {self.enrolled} of {self.devices} enrolled; "
            f"{sum(self.drifting.values())} drifting" + (f" ({drifting})" if drifting else ""),
            f"commands applied and answered: {sum(self.commands.values())} ({commands})",
        ]
        names = {ENROL: "enrolments", CHECKIN: "check-ins", RESULT: "command results"}
        for kind in KINDS:
            values = [v * 1000 for v in self.latencies[kind]]
            lines.append(
                f"{names[kind]}: {len(values)} in {self.seconds(kind):.1f} s ({self.rate(kind):.1f}/s); "
                f"latency p50 {percentile(values, 0.50):.1f} ms, p95 {percentile(values, 0.95):.1f} ms, "
                f"p99 {percentile(values, 0.99):.1f} ms"
            )
        if self.throttled:
            lines.append(f"throttled: {self.throttled} answer(s) 429, retried after the server's Retry-After")
        if self.errors:
            kinds = ", ".join(f"{label}: {count}" for label, count in self.errors.most_common())
            lines.append(f"errors: {self.error_count} ({kinds})")
        else:
            lines.append("errors: none")
        return lines
