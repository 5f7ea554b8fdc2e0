"""`mdm demo`'s school, built through the public API of a running service, and the account it prints.

Everything here is what staff and devices would do on a real first day: read the access policy, load
OS release data, add the school's apps (with licence pools) and profiles (Wi-Fi, web filter, passcode),
import the MIS's people, enrol every device with its own QR code's token through the fleet simulator,
run the compliance check, and offboard five leavers until their devices have done what the exit asked.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from mdm.categories import Category
from mdm.simulator.driver import Fleet, SimulatedDevice, async_client
from mdm.simulator.fleet import KINDS, DeviceSpec, plan_fleet
from mdm.simulator.run import showing_progress
from mdm.simulator.staff_api import SimulationError, StaffApi

LEAVERS = 5
STAFF_SHARE = 0.1
CONCURRENCY = 16
# Enough for the devices to apply the exit's commands and for a wiped iPad to report it is back in stock.
OFFBOARDING_ROUNDS = 4
FIRST_NAMES = "Amara Ben Chloe Dev Ella Finn Grace Hamza Isla Jack Kai Layla Mia Noah Olivia Priya Ravi Sofia Tom Zara"
LAST_NAMES = "Ahmed Brown Clarke Davies Evans Fraser Green Hughes Iqbal Jones Khan Lewis Morgan Patel Roberts Smith"
YEAR_GROUPS = ("Year 7", "Year 8", "Year 9", "Year 10", "Year 11")
EVERY_CATEGORY = [c.value for c in Category if c != Category.visitor_owned]
PROXY = {"type": "proxy", "pac_url": "https://filter.demo.sch.uk/proxy.pac"}
WIFI = {"type": "wifi", "ssid": "Demo-School", "security": "wpa2_enterprise"}
PASSCODE = {"type": "passcode", "min_length": 6}
# Below these the os_supported rule fails a device: the simulator's "old OS" drift sits under them.
OS_FLOORS = (("ios", "16"), ("ipados", "16"), ("android", "12"))


@dataclass
class Person:
    id: str
    external_id: str
    kind: str
    display_name: str


@dataclass
class DemoSchool:
    """What was built and what came of it, for the account."""

    people: list[Person] = field(default_factory=list)
    apps: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)
    policy: list[dict[str, Any]] = field(default_factory=list)
    fleet: Fleet | None = None
    compliance: dict[str, Any] = field(default_factory=dict)
    exits: list[tuple[Person, dict[str, Any]]] = field(default_factory=list)
    seconds: float = 0.0


def build_demo_school(url: str, admin_token: str, people: int, devices: int, progress: TextIO) -> DemoSchool:
    return asyncio.run(_build(url, admin_token, people, devices, progress))


async def _build(url: str, admin_token: str, people: int, devices: int, progress: TextIO) -> DemoSchool:
    started = time.monotonic()
    school = DemoSchool()

    def say(message: str) -> None:
        progress.write(f"demo: {time.monotonic() - started:5.1f} s  {message}\n")
        progress.flush()

    async with async_client(CONCURRENCY) as http:
        api = StaffApi(http, url, admin_token)
        plan = plan_fleet(devices)
        say("the access policy, OS release data, apps with licence pools, Wi-Fi, web filter and passcode profiles")
        school.policy = (await api.get("/api/v1/access-policy"))["items"]
        floors = [{"platform": platform, "version": version} for platform, version in OS_FLOORS]
        await api.post("/api/v1/os-releases", {"releases": [], "minimum_supported": floors})
        school.apps = [await api.post("/api/v1/apps", app) for app in _apps(plan)]
        school.profiles = [await api.post("/api/v1/profiles", profile) for profile in _profiles()]
        say(f"{people} people from the MIS (CSV import)")
        await api.post("/api/v1/people/import", content=_people_csv(people), media="text/csv")
        school.people = await _people(api)
        say(f"{devices} enrolment tokens, one per person's device and one per cart")
        specs = await _with_tokens(api, _with_owners(plan, school.people))
        school.fleet = fleet = Fleet(url, http, concurrency=CONCURRENCY)
        fleet.add(specs)
        say(f"{devices} devices enrol and check in twice (the fleet simulator)")
        async with showing_progress(fleet.stats, progress):
            await fleet.enrol()
            await fleet.run(rounds=2, checkin_every=0)
        say("the compliance check")
        school.compliance = await _compliance(api)
        say(f"{LEAVERS} leavers offboarded")
        school.exits = await _offboard(api, fleet, _leavers(specs, school.people))
    school.seconds = time.monotonic() - started
    return school


# --- The school's catalogue -------------------------------------------------------------------------


def _apps(plan: list[DeviceSpec]) -> list[dict[str, Any]]:
    """School-licensed apps get a pool a little larger than the devices that need them, as a school buys."""
    counts = Counter(spec.category for spec in plan)
    ipads = counts[Category.school_single_user] + counts[Category.authorised]
    carts = counts[Category.school_shared]
    return [
        _app("uk.sch.demo.maths", "Maths Practice", "school", ipads, ["school_single_user", "authorised"]),
        _app(
            "uk.sch.demo.reading",
            "Reading Lab",
            "school",
            ipads + carts,
            ["school_single_user", "school_shared", "authorised"],
        ),
        _app("uk.sch.demo.classroom", "Classroom", "free", 0, ["school_single_user", "school_shared", "authorised"]),
        _app("uk.sch.demo.staffauth", "Staff Sign-in", "free", 0, ["staff_owned"]),
        _app("uk.sch.demo.staffauth.android", "Staff Sign-in", "free", 0, ["staff_owned"], platform="android"),
    ]


def _app(
    identifier: str, name: str, licence: str, needed: int, required_for: list[str], platform: str = "ios"
) -> dict[str, Any]:
    app = {"identifier": identifier, "name": name, "platform": platform, "licence": licence}
    if licence == "school":
        app["licences_total"] = needed + max(5, needed // 10)
    return {**app, "required_for": required_for}


def _profiles() -> list[dict[str, Any]]:
    def profile(name: str, identifier: str, payload: dict[str, Any], categories: list[str]) -> dict[str, Any]:
        return {"name": name, "identifier": identifier, "payloads": [payload], "scope": {"categories": categories}}

    return [
        profile("School Wi-Fi", "uk.sch.demo.wifi", WIFI, EVERY_CATEGORY),
        profile("Web filter", "uk.sch.demo.proxy", PROXY, EVERY_CATEGORY),
        profile("Passcode", "uk.sch.demo.passcode", PASSCODE, ["school_single_user", "authorised", "staff_owned"]),
    ]


# --- People and their devices -----------------------------------------------------------------------


def _people_csv(count: int) -> bytes:
    staff = max(1, round(count * STAFF_SHARE))
    first, last = FIRST_NAMES.split(), LAST_NAMES.split()
    lines = ["external_id,kind,display_name,groups,date_of_birth"]
    for n in range(count):
        name = f"{first[n % len(first)]} {last[(n // len(first)) % len(last)]}"
        if n < staff:
            lines.append(f"STAFF{n + 1:04d},staff,{name},Staff,")
            continue
        year = n % len(YEAR_GROUPS)
        form = f"{7 + year}{'ABCD'[n % 4]}"
        born = f"{2013 - year}-0{1 + n % 9}-1{n % 9}"
        lines.append(f"L{n + 1:05d},learner,{name},{YEAR_GROUPS[year]};{form},{born}")
    return ("\n".join(lines) + "\n").encode()


async def _people(api: StaffApi) -> list[Person]:
    people, cursor = [], None
    while True:
        page = await api.get("/api/v1/people", limit=1000, **({"cursor": cursor} if cursor else {}))
        people += [Person(p["id"], p["external_id"], p["kind"], p["display_name"]) for p in page["items"]]
        if not (cursor := page.get("next_cursor")):
            return sorted(people, key=lambda person: person.external_id)


def _with_owners(plan: list[DeviceSpec], people: list[Person]) -> list[DeviceSpec]:
    """Each learner's or staff member's device goes to the next such person, round the school."""
    by_kind = {kind: [p for p in people if p.kind == kind] for kind in ("learner", "staff")}
    taken: Counter[str] = Counter()
    owned = []
    for spec in plan:
        pool = by_kind.get(spec.owner or "", [])
        if not pool:
            owned.append(spec)
            continue
        owned.append(replace(spec, person_id=pool[taken[spec.owner or ""] % len(pool)].id))
        taken[spec.owner or ""] += 1
    return owned


async def _with_tokens(api: StaffApi, specs: list[DeviceSpec]) -> list[DeviceSpec]:
    """A single-use token bound to its person for each personal or one-to-one device; one per cart category."""
    carts = [spec for spec in specs if spec.person_id is None]
    shared: dict[Category, str] = {}
    for category in sorted({spec.category for spec in carts}):
        body = {"category": category.value, "max_uses": sum(s.category == category for s in carts)}
        shared[category] = (await api.post("/api/v1/enrollment-tokens", body))["token"]
    limit = asyncio.Semaphore(CONCURRENCY)

    async def token(spec: DeviceSpec) -> DeviceSpec:
        if spec.person_id is None:
            return replace(spec, token=shared[spec.category])
        async with limit:
            body = {"category": spec.category.value, "person_id": spec.person_id, "max_uses": 1}
            return replace(spec, token=(await api.post("/api/v1/enrollment-tokens", body))["token"])

    return list(await asyncio.gather(*(token(spec) for spec in specs)))


# --- Compliance and leavers -------------------------------------------------------------------------


async def _compliance(api: StaffApi) -> dict[str, Any]:
    run = await api.post("/api/v1/compliance/runs")
    while (result := await api.get(f"/api/v1/compliance/runs/{run['id']}"))["status"] == "running":
        await asyncio.sleep(0.2)
    return result


def _leavers(specs: list[DeviceSpec], people: list[Person]) -> list[Person]:
    """Five learners with devices, the first of each kind of device first, so the exits show every path."""
    by_id = {person.id: person for person in people}
    chosen: list[str] = []
    for kind in ("ipad", "scheme", "learner"):
        first = next((s.person_id for s in specs if s.kind == kind and s.person_id not in chosen), None)
        if first:
            chosen.append(first)
    for spec in specs:
        if len(chosen) >= LEAVERS:
            break
        if spec.owner == "learner" and spec.person_id and spec.person_id not in chosen:
            chosen.append(spec.person_id)
    return [by_id[person_id] for person_id in chosen]


async def _offboard(api: StaffApi, fleet: Fleet, leavers: list[Person]) -> list[tuple[Person, dict[str, Any]]]:
    """Open the exits; the IT office receives the school iPads; the devices check in until the exits are done."""
    cases = {}
    for person in leavers:
        cases[person.id] = await api.post("/api/v1/exits", {"person_id": person.id, "reason": "left school"})
    devices = leaver_devices(fleet, cases)
    for _ in range(OFFBOARDING_ROUNDS):
        for case in cases.values():
            await _collect_handed_in(api, case)
        await fleet.round(devices)
        cases = {pid: await api.get(f"/api/v1/exits/{case['id']}") for pid, case in cases.items()}
        if all(case["status"] in ("completed", "completed_with_exceptions") for case in cases.values()):
            break
    return [(person, cases[person.id]) for person in leavers]


async def _collect_handed_in(api: StaffApi, case: dict[str, Any]) -> None:
    """The learner hands the school iPad in: the technician ticks the step, and the wipe can go."""
    for device in case["devices"]:
        for step in device["steps"]:
            if step["kind"] == "collect_device" and step["status"] in ("pending", "waiting_for_device"):
                note = {"note": "Handed in at the IT office on the last day (demo)."}
                await api.post(f"/api/v1/exits/{case['id']}/steps/{step['id']}/complete", note)


# --- The account ------------------------------------------------------------------------------------


def account(school: DemoSchool, url: str, admin_token: str) -> list[str]:
    """The short account printed at the end: what was made, compliance, the five exits, where to look."""
    fleet = school.fleet
    assert fleet is not None
    stats = fleet.stats
    learners = sum(person.kind == "learner" for person in school.people)
    kinds = Counter(device.spec.kind for device in fleet.devices)
    compliance = school.compliance
    lines = [
        f"Demo school built in {school.seconds:.0f} s at {url}",
        f"  {len(school.people)} people ({learners} learners, {len(school.people) - learners} staff) in year groups and forms",
        "  access policy: "
        + ", ".join(
            f"{rule['category']} {rule['network_access'] if rule['allowed'] else 'not allowed'}"
            for rule in school.policy
        ),
        "  apps: "
        + ", ".join(
            f"{app['name']} ({app['platform']}, {app.get('licences_total')} licences)"
            if app["licence"] == "school"
            else f"{app['name']} ({app['platform']}, free)"
            for app in school.apps
        ),
        "  profiles: " + ", ".join(profile["name"] for profile in school.profiles),
        f"  {stats.enrolled} devices enrolled of {stats.devices}: "
        + ", ".join(f"{count} {_kind_label(kind)}" for kind, count in kinds.most_common()),
        f"  {sum(stats.drifting.values())} devices drifting: "
        + ", ".join(f"{count} {drift.replace('_', ' ')}" for drift, count in sorted(stats.drifting.items())),
        *(f"  {line}" for line in stats.summary()[1:]),
        f"compliance: {compliance.get('compliant', 0)} compliant, {compliance.get('non_compliant', 0)} non-compliant, "
        f"{compliance.get('unknown', 0)} unknown",
        "leavers:",
        *(_exit_line(person, case) for person, case in school.exits),
        "Look at:",
        f"  {url}/docs  (the API, with 'Authorize' for the token below)",
        f"  {url}/api/v1/devices?compliance=non_compliant",
        f"  {url}/api/v1/exits",
        f"admin token: {admin_token}",
        f'  e.g. curl -H "Authorization: Bearer {admin_token}" "{url}/api/v1/devices?compliance=non_compliant"',
    ]
    return lines


def _kind_label(kind: str) -> str:
    return KINDS[kind].label + "s"


def _exit_line(person: Person, case: dict[str, Any]) -> str:
    devices = case["devices"]
    steps = [step for device in devices for step in device["steps"]]
    done = sum(step["status"] in ("done", "done_manually", "skipped") for step in steps)
    removed = sum(len(device["apps_removed"]) for device in devices)
    kept = sum(len(device["apps_kept"]) for device in devices)
    ownership = ", ".join(sorted({device["ownership"] for device in devices})) or "no devices"
    return (
        f"  leaver {person.display_name} ({person.external_id}): {case['status']}; {len(devices)} device(s) "
        f"({ownership}), {done} of {len(steps)} steps done, {removed} school apps removed, {kept} own apps kept"
    )


def leaver_devices(fleet: Fleet, people: Iterable[str]) -> list[SimulatedDevice]:
    """The simulated devices of these people (by person id)."""
    owned = set(people)
    return [device for device in fleet.devices if device.spec.person_id in owned]


__all__ = ["DemoSchool", "SimulationError", "account", "build_demo_school"]
