"""The compliance rules, as pure functions over one device's evidence: no database here.

Each rule has a stable id, a one-line description naming the source it enforces, and parameters an admin
can change. A rule answers None (it passes, or it has nothing to judge) or a failure detail.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from compliance.os_releases.service import line_of, required_from
from mdm.inventory.models import InstalledApp, ReportedInventory
from mdm.versions import meets_minimum, version_key
from profiles.service import AppSpec, ProfileSpec


@dataclass(frozen=True)
class RuleDefinition:
    id: str
    description: str
    source: str
    defaults: dict[str, Any]
    enabled: bool = True


RULES = (
    RuleDefinition(
        "required_apps",
        "Every required school app is installed, managed, at or above its minimum version.",
        "Mobile technologies policy: periodic checks that users have not removed required apps.",
        {},
    ),
    RuleDefinition(
        "profiles_present",
        "Every profile the device should carry is installed at its current version.",
        "Mobile technologies policy: filtering applies to all mobile technologies; bypassing it is not permitted.",
        {},
    ),
    RuleDefinition(
        "os_supported",
        "The operating system is not below the oldest version its vendor still supports.",
        "Cyber Essentials: software must be licensed and supported.",
        {},
    ),
    RuleDefinition(
        "os_updates",
        "Where a newer release of the device's OS line came out more than N days ago, the device has it.",
        "Cyber Essentials: high and critical updates within 14 days.",
        {"grace_days": 14},
    ),
    RuleDefinition(
        "passcode",
        "A passcode is set, at least N characters long where the device reports its length.",
        "Mobile technologies policy: pass-codes or PINs should be set; Cyber Essentials: user access control.",
        {"min_length": 6},
    ),
    RuleDefinition(
        "malware_protection",
        "Where the platform reports it, malware protection is on with definitions at most N days old.",
        "Mobile technologies policy: the device is virus protected; Cyber Essentials: malware protection.",
        {"max_definitions_age_days": 7},
    ),
    RuleDefinition(
        "not_jailbroken", "The device is not jailbroken or rooted.", "Cyber Essentials: secure configuration.", {}
    ),
    RuleDefinition(
        "checked_in_recently",
        "The device checked in within the last N days.",
        "Mobile technologies policy: all school devices are subject to routine monitoring.",
        {"days": 7, "unknown_until_days": 30},
    ),
    RuleDefinition(
        "age_rating",
        "A learner's device carries no school-catalogued app rated above the learner's age.",
        "Mobile technologies policy: users should be mindful of the age limits for apps.",
        {},
        enabled=False,
    ),
)
RULES_BY_ID = {rule.id: rule for rule in RULES}


@dataclass
class OsCatalogue:
    minimum: dict[str, str] = field(default_factory=dict)  # platform -> oldest supported version
    releases: dict[tuple[str, str], list[tuple[str, datetime]]] = field(default_factory=dict)  # (platform, line) -> ...


@dataclass
class Evidence:
    device_id: str
    platform: str
    os_version: str | None
    last_checkin_at: datetime | None
    enrolled_at: datetime | None
    inventory: ReportedInventory | None  # None: the device has never reported
    desired_profiles: list[ProfileSpec]
    desired_apps: list[AppSpec]
    age: int | None = None
    app_ratings: dict[str, int] = field(default_factory=dict)


Rule = Callable[[Evidence, dict[str, Any], datetime, OsCatalogue], str | None]
NOTHING_REPORTED = ReportedInventory()


def _reported(e: Evidence) -> ReportedInventory:
    return e.inventory or NOTHING_REPORTED


def _required_apps(e: Evidence, _p: dict[str, Any], _now: datetime, _os: OsCatalogue) -> str | None:
    problems = []
    reported = _reported(e).apps
    for app in e.desired_apps:
        on_device: InstalledApp | None = reported.get(app.identifier)
        if on_device is None:
            problems.append(f"{app.identifier} missing")
        elif not on_device["managed"]:
            problems.append(f"{app.identifier} not managed")
        elif not meets_minimum(on_device["version"], app.min_version):
            problems.append(f"{app.identifier} {on_device['version']} below {app.min_version}")
    return "; ".join(problems) or None


def _profiles_present(e: Evidence, _p: dict[str, Any], _now: datetime, _os: OsCatalogue) -> str | None:
    problems = []
    reported = _reported(e).profiles
    for profile in e.desired_profiles:
        version = reported.get(profile.identifier)
        if version is None:
            problems.append(f"{profile.identifier} missing")
        elif version != profile.version:
            problems.append(f"{profile.identifier} at version {version}, not {profile.version}")
    return "; ".join(problems) or None


def _os_supported(e: Evidence, _p: dict[str, Any], _now: datetime, os: OsCatalogue) -> str | None:
    minimum = os.minimum.get(e.platform)
    if minimum is None or not e.os_version:
        return None
    if version_key(e.os_version) < version_key(minimum):
        return f"{e.platform} {e.os_version} is below {minimum}, the oldest version still supported"
    return None


def _os_updates(e: Evidence, p: dict[str, Any], now: datetime, os: OsCatalogue) -> str | None:
    if not e.os_version:
        return None
    grace = int(p.get("grace_days", 14))
    lines = [line for platform, line in os.releases if platform == e.platform]
    releases = os.releases.get((e.platform, line_of(e.os_version, lines)), [])
    required = required_from(releases, e.os_version, now, grace)
    if required is None:
        return None
    released = dict(releases)[required]
    return f"{e.os_version} is behind {required}, released {released:%Y-%m-%d}, more than {grace} days ago"


def _passcode(e: Evidence, p: dict[str, Any], _now: datetime, _os: OsCatalogue) -> str | None:
    reported = _reported(e)
    if reported.passcode_set is False:
        return "no passcode is set"
    length, minimum = reported.passcode_length, int(p.get("min_length", 6))
    if reported.passcode_set and length is not None and length < minimum:
        return f"the passcode has {length} characters, fewer than {minimum}"
    if reported.passcode_compliant is False:  # the device's own verdict against the passcode profile (Apple)
        return "the passcode does not meet the school's passcode profile"
    return None


def _malware_protection(e: Evidence, p: dict[str, Any], now: datetime, _os: OsCatalogue) -> str | None:
    protection = _reported(e).malware_protection
    if protection is None:
        return None  # the platform does not report it
    if not protection.enabled:
        return "malware protection is off"
    updated_at = protection.definitions_updated_at
    limit = int(p.get("max_definitions_age_days", 7))
    if updated_at is None:
        return "malware definitions have never been updated"
    if updated_at < now - timedelta(days=limit):
        return f"malware definitions are from {updated_at:%Y-%m-%d}, more than {limit} days old"
    return None


def _not_jailbroken(e: Evidence, _p: dict[str, Any], _now: datetime, _os: OsCatalogue) -> str | None:
    return "the device is jailbroken or rooted" if _reported(e).jailbroken else None


def _checked_in_recently(e: Evidence, p: dict[str, Any], now: datetime, _os: OsCatalogue) -> str | None:
    days = int(p.get("days", 7))
    last = e.last_checkin_at or e.enrolled_at
    if last is None or last >= now - timedelta(days=days):
        return None
    return (
        f"last checked in {last:%Y-%m-%d}, more than {days} days ago"
        if e.last_checkin_at
        else (f"has not checked in since enrolling on {last:%Y-%m-%d}")
    )


def _age_rating(e: Evidence, _p: dict[str, Any], _now: datetime, _os: OsCatalogue) -> str | None:
    if e.age is None:
        return None
    above = sorted(identifier for identifier in _reported(e).apps if e.app_ratings.get(identifier, 0) > e.age)
    return f"apps rated above the learner's age ({e.age}): {', '.join(above)}" if above else None


EVALUATORS: dict[str, Rule] = {
    "required_apps": _required_apps,
    "profiles_present": _profiles_present,
    "os_supported": _os_supported,
    "os_updates": _os_updates,
    "passcode": _passcode,
    "malware_protection": _malware_protection,
    "not_jailbroken": _not_jailbroken,
    "checked_in_recently": _checked_in_recently,
    "age_rating": _age_rating,
}
REMEDIABLE = frozenset({"required_apps", "profiles_present"})  # the reconciler can put these right


def evaluate(
    e: Evidence, rules: dict[str, tuple[bool, dict[str, Any]]], now: datetime, os: OsCatalogue
) -> tuple[str, list[dict[str, str]]]:
    """The device's status and failures. Before its first inventory it is unknown, unless silent too long."""
    silent = int(rules.get("checked_in_recently", (True, {}))[1].get("unknown_until_days", 30))
    since = e.last_checkin_at or e.enrolled_at
    if e.inventory is None and (since is None or since >= now - timedelta(days=silent)):
        return "unknown", []
    failures = []
    for rule_id, (enabled, params) in rules.items():
        if not enabled or rule_id not in EVALUATORS:
            continue
        if e.inventory is None and rule_id != "checked_in_recently":
            continue
        detail = EVALUATORS[rule_id](e, params, now, os)
        if detail:
            failures.append({"rule": rule_id, "detail": detail})
    return ("non_compliant" if failures else "compliant"), failures
