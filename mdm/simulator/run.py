"""`mdm simulate` as a function: get enrolment tokens, enrol the fleet, run its rounds, show progress, measure.

Enrolment tokens come from the technician (one per category, with enough uses) or are made through the
API with an admin or technician token, one per category for exactly the devices planned: the same
tokens a school would print on a cart's QR code, so enrolment follows the real path and its limits.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TextIO

import httpx

from mdm.categories import Category
from mdm.simulator.driver import DEFAULT_CONCURRENCY, Fleet, async_client
from mdm.simulator.fleet import DEFAULT_DRIFT_PERCENT, DEFAULT_SEED, DeviceSpec, plan_fleet
from mdm.simulator.staff_api import SimulationError, StaffApi
from mdm.simulator.stats import Stats

__all__ = ["Options", "SimulationError", "create_category_tokens", "plan_for", "simulate"]

# Long enough for a slow run to finish enrolling; the tokens are useless once the run is over anyway.
TOKEN_HOURS = 24
MAX_TOKEN_USES = 100_000
PROGRESS_EVERY_TTY = 0.5
PROGRESS_EVERY_LOG = 5.0


@dataclass(frozen=True)
class Options:
    url: str
    devices: int
    tokens: Mapping[Category, str] = field(default_factory=dict)
    admin_token: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    checkin_every: float = 10.0
    rounds: int | None = None
    duration: float | None = None
    seed: int = DEFAULT_SEED
    drift_percent: float = DEFAULT_DRIFT_PERCENT


def simulate(options: Options, progress: TextIO = sys.stderr, stats: Stats | None = None) -> Stats:
    """Run the whole simulation and return what it measured (in `stats` as it goes, when given)."""
    return asyncio.run(_simulate(options, progress, stats or Stats()))


async def _simulate(options: Options, progress: TextIO, stats: Stats) -> Stats:
    plan = plan_for(options)
    async with async_client(options.concurrency) as http:
        tokens = dict(options.tokens)
        missing = Counter(spec.category for spec in plan if spec.category not in tokens)
        if missing:
            tokens |= await create_category_tokens(http, options.url, options.admin_token or "", missing)
        fleet = Fleet(options.url, http, concurrency=options.concurrency, seed=options.seed, stats=stats)
        fleet.add(replace(spec, token=tokens[spec.category]) for spec in plan)
        async with showing_progress(fleet.stats, progress):
            await fleet.enrol()
            rounds = options.rounds if options.rounds is not None or options.duration is not None else 3
            await fleet.run(rounds, options.checkin_every, options.duration)
    return fleet.stats


async def create_category_tokens(
    http: httpx.AsyncClient, url: str, admin_token: str, counts: Mapping[Category, int]
) -> dict[Category, str]:
    """One enrolment token per category, with a use for each device of it."""
    api = StaffApi(http, url, admin_token)
    tokens = {}
    for category, count in counts.items():
        body = {"category": category.value, "max_uses": min(count, MAX_TOKEN_USES), "expires_in_hours": TOKEN_HOURS}
        tokens[category] = (await api.post("/api/v1/enrollment-tokens", body))["token"]
    return tokens


@asynccontextmanager
async def showing_progress(stats: Stats, stream: TextIO) -> AsyncIterator[None]:
    """A line of progress on `stream`: rewritten in place on a terminal, every few seconds in a log."""
    live = stream.isatty()

    async def report() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_TTY if live else PROGRESS_EVERY_LOG)
            stream.write(("\r" + stats.progress_line() + "\033[K") if live else stats.progress_line() + "\n")
            stream.flush()

    task = asyncio.create_task(report())
    try:
        yield
    finally:
        task.cancel()
        stream.write(("\r" if live else "") + stats.progress_line() + ("\033[K\n" if live else "\n"))
        stream.flush()


def plan_for(options: Options) -> list[DeviceSpec]:
    """The devices `options` will simulate, for a caller who wants to know before running them."""
    if not options.admin_token and not options.tokens:
        raise SimulationError("give --admin-token, or at least one --token CATEGORY=TOKEN")
    # Without an admin token only the categories with a given token can enrol, so the mix keeps to them.
    categories = None if options.admin_token else frozenset(options.tokens)
    return plan_fleet(options.devices, seed=options.seed, drift_percent=options.drift_percent, categories=categories)
