"""The reconciler's decision, as a pure function: desired state and reported state in, commands out.

No database here: profiles/reconciler.py loads the facts for a batch of devices with a few set-based
queries, calls `plan_device` for each, and writes the result in bulk. Keeping the decision pure is
what lets property-based tests throw thousands of random states at it.
"""

from dataclasses import dataclass, field

from mdm.devices.models import MANAGED_STATES, DeviceState

# version_key moved to mdm.versions; still importable from here for the modules that use it.
from mdm.versions import meets_minimum, version_key  # noqa: F401

ENROLLED = DeviceState.enrolled.value
# Apple's store serves iPhone and iPad alike; other platforms have their own.
PLATFORM_FAMILY = {"ios": "apple-mobile", "ipados": "apple-mobile"}


@dataclass(frozen=True)
class DeviceFacts:
    device_id: str
    state: str
    category: str
    platform: str
    network_access: str
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ProfileSpec:
    id: str
    identifier: str
    version: int
    is_network: bool
    categories: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    network_access: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AppSpec:
    id: str
    identifier: str
    platform: str
    licensed: bool
    min_version: str | None = None
    categories: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ReportedApp:
    version: str | None
    managed: bool


@dataclass
class Reported:
    profiles: dict[str, int | None] = field(default_factory=dict)  # identifier -> version
    apps: dict[str, ReportedApp] = field(default_factory=dict)  # identifier -> what the device says
    school_installs: dict[str, str] = field(default_factory=dict)  # app id -> reserved | installed
    open_commands: dict[str, tuple[str, str]] = field(default_factory=dict)  # target -> (command id, intent)


@dataclass(frozen=True)
class Action:
    type: str  # InstallProfile, RemoveProfile, InstallApplication, RemoveApplication
    target: str
    intent: str
    profile: ProfileSpec | None = None
    app: AppSpec | None = None


@dataclass
class DevicePlan:
    device_id: str
    queue: list[Action] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)  # open command ids made stale
    release: list[str] = field(default_factory=list)  # app ids whose reserved licence goes back


def profile_target(identifier: str) -> str:
    return f"profile:{identifier}"


def app_target(identifier: str) -> str:
    return f"app:{identifier}"


# --- What the device should have, and why ---------------------------------------------------------


def _scope_reasons(
    facts: DeviceFacts, categories: frozenset[str], groups: frozenset[str], words: tuple[str, str]
) -> list[str] | None:
    """The categories-and-groups part of any scope: why it matches, or None when the device is outside it."""
    category_word, group_word = words
    reasons = []
    if categories:
        if facts.category not in categories:
            return None
        reasons.append(f"{category_word}{facts.category}")
    if groups:
        shared = sorted(facts.groups & groups)
        if not shared:
            return None
        reasons.append(f"{group_word}{', '.join(shared)}")
    return reasons


def profile_reasons(facts: DeviceFacts, profile: ProfileSpec) -> list[str] | None:
    """Why the profile applies to the device, or None when it does not."""
    if facts.state != ENROLLED:
        return None
    reasons = _scope_reasons(facts, profile.categories, profile.groups, ("category ", "group "))
    if reasons is None:
        return None
    if profile.is_network:
        allowed = profile.network_access or frozenset({"full", "internet_only"})
        if facts.network_access not in allowed:
            return None
        reasons.append(f"network access {facts.network_access}")
    return reasons or ["every device"]


def app_reasons(facts: DeviceFacts, app: AppSpec) -> list[str] | None:
    if facts.state != ENROLLED or not same_store(app.platform, facts.platform):
        return None
    if not app.categories and not app.groups:
        return None  # in the catalogue, required of nobody
    return _scope_reasons(facts, app.categories, app.groups, ("required for ", "required for group "))


def same_store(app_platform: str, device_platform: str) -> bool:
    return PLATFORM_FAMILY.get(app_platform, app_platform) == PLATFORM_FAMILY.get(device_platform, device_platform)


# --- The plan --------------------------------------------------------------------------------------


def plan_device(
    facts: DeviceFacts,
    profiles: list[ProfileSpec],
    school_profile_identifiers: set[str],
    apps: list[AppSpec],
    apps_by_id: dict[str, AppSpec],
    reported: Reported,
) -> DevicePlan:
    """The commands that close the gap for one device; never one already open, never a family app."""
    plan = DevicePlan(facts.device_id)
    if facts.state not in MANAGED_STATES:
        return plan
    desired_profiles = {p.identifier: p for p in profiles if profile_reasons(facts, p) is not None}
    desired_apps = {a.id: a for a in apps if app_reasons(facts, a) is not None}
    _plan_profiles(plan, desired_profiles, school_profile_identifiers, reported)
    _plan_apps(plan, desired_apps, apps_by_id, reported)
    return plan


def _want(plan: DevicePlan, reported: Reported, action: Action) -> None:
    """Queues the action unless the same intent is already open; an open command with another intent is stale."""
    open_command = reported.open_commands.get(action.target)
    if open_command is not None:
        command_id, intent = open_command
        if intent == action.intent:
            return
        plan.cancel.append(command_id)
    plan.queue.append(action)


def _plan_profiles(
    plan: DevicePlan, desired: dict[str, ProfileSpec], school_identifiers: set[str], reported: Reported
) -> None:
    for identifier, profile in sorted(desired.items()):
        if reported.profiles.get(identifier, -1) != profile.version:
            intent = f"install@{profile.version}"
            _want(plan, reported, Action("InstallProfile", profile_target(identifier), intent, profile=profile))
    for identifier in sorted(reported.profiles):
        if identifier in school_identifiers and identifier not in desired:
            _want(plan, reported, Action("RemoveProfile", profile_target(identifier), "remove"))
    for target, (command_id, intent) in reported.open_commands.items():
        identifier = target.removeprefix("profile:")
        # An install never applied, for a profile no longer wanted: call it off.
        undelivered = identifier not in desired and identifier not in reported.profiles
        if target.startswith("profile:") and intent.startswith("install") and undelivered:
            plan.cancel.append(command_id)


def _plan_apps(
    plan: DevicePlan, desired: dict[str, AppSpec], apps_by_id: dict[str, AppSpec], reported: Reported
) -> None:
    for app in sorted(desired.values(), key=lambda a: a.identifier):
        on_device = reported.apps.get(app.identifier)
        if on_device is not None and not on_device.managed:
            continue  # the family's own copy: never a command's target
        if on_device is not None and meets_minimum(on_device.version, app.min_version):
            continue
        intent = f"install@{app.min_version or 'latest'}"
        _want(plan, reported, Action("InstallApplication", app_target(app.identifier), intent, app=app))
    for app_id, status in sorted(reported.school_installs.items()):
        if app_id in desired or app_id not in apps_by_id:
            continue
        app = apps_by_id[app_id]
        target = app_target(app.identifier)
        open_command = reported.open_commands.get(target)
        if status == "reserved":
            if open_command is not None:
                plan.cancel.append(open_command[0])
            plan.release.append(app_id)  # queued but never installed: the licence goes straight back
            continue
        on_device = reported.apps.get(app.identifier)
        if on_device is None or not on_device.managed:
            plan.release.append(app_id)  # already gone, or replaced by the family's own: nothing to remove
            continue
        _want(plan, reported, Action("RemoveApplication", target, "remove", app=app))
