"""The one reconciler: desired state against reported state, for any set of devices, in batches.

Per batch of devices it runs a fixed handful of set-based queries (facts, groups, reported profiles and
apps, school installs, open commands), decides per device in memory (profiles/planning.py), and writes
the commands, cancellations and licence changes in bulk. No query is made per device.
"""

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, bindparam, case, delete, insert, or_, update
from sqlmodel import Session, col, select

from mdm.access_policy.models import AccessRule
from mdm.commands import intents
from mdm.commands.models import OPEN_STATUSES, Command, CommandStatus
from mdm.csv_import import chunks
from mdm.database import among, one_of, refresh_statistics
from mdm.desired_state import DeviceSelector
from mdm.devices.models import MANAGED_STATES, Device
from mdm.hooks import VersionChange
from mdm.ids import new_id, utcnow
from mdm.inventory.models import DeviceApp, DeviceProfile
from mdm.people.models import PersonGroup
from mdm.versions import meets_minimum
from profiles.models import App, Profile, SchoolInstall, ScopeRule
from profiles.planning import (
    Action,
    AppSpec,
    DeviceFacts,
    DevicePlan,
    ProfileSpec,
    Reported,
    ReportedApp,
    app_reasons,
    plan_device,
    profile_reasons,
)

BATCH_SIZE = 1000
# After queuing this many commands at once, PostgreSQL's planner is told the command table grew.
STATISTICS_AFTER = 5000
RECONCILER = "reconciler"


@dataclass
class Catalogue:
    """Everything the school manages, loaded once per reconcile run (small tables)."""

    profiles: list[ProfileSpec]
    school_profile_identifiers: set[str]
    apps: list[AppSpec]
    apps_by_id: dict[str, AppSpec]
    desired_cache: dict[tuple[Any, ...], tuple[list[ProfileSpec], list[AppSpec]]] = field(default_factory=dict)


@dataclass
class RunSummary:
    """What one run changed: `queued` decides when the planner's statistics are refreshed."""

    queued: int = 0
    cancelled: int = 0


def reconcile(session: Session, selector: DeviceSelector, catalogue: Catalogue | None = None) -> RunSummary:
    """`catalogue`: one a caller loaded for many batches (the nightly run); read afresh otherwise."""
    catalogue = catalogue or load_catalogue(session)
    summary = RunSummary()
    for batch in _device_batches(session, selector):
        facts = batch_facts(session, batch)
        reported = batch_reported(session, batch)
        plans = [
            plan_device(
                facts[d],
                catalogue.profiles,
                catalogue.school_profile_identifiers,
                catalogue.apps,
                catalogue.apps_by_id,
                reported[d],
            )
            for d in batch
            if d in facts
        ]
        _apply(session, plans, reported, summary)
    if summary.queued > STATISTICS_AFTER:
        refresh_statistics(session, "command", "school_install")
    return summary


def reconcile_report(
    session: Session,
    device_id: str,
    apps: frozenset[str],
    profiles: frozenset[str],
    app_versions: Mapping[str, VersionChange],
) -> RunSummary | None:
    """After a device's stored report changed: reconciles it, unless the change is to nothing a plan reads.

    A plan reads a device's reported apps and profiles only by the identifiers of the school's own
    (profiles/planning.py; deleted ones too, for what the school put there), and of an app that stays on
    the device, managed as before, only whether it meets the school's minimum version. A new OS version,
    a passcode, the family's own apps or the school's apps updating overnight, or a profile of its own,
    move no plan: on most mornings they are all that changes, and such a check-in is then as cheap as
    an unchanged one.
    """
    if _any_named(session, _CATALOGUED_PROFILES, profiles) or _moves_an_app_plan(session, apps, app_versions):
        return reconcile(session, DeviceSelector(device_ids=frozenset({device_id})))
    return None


def _moves_an_app_plan(session: Session, apps: frozenset[str], app_versions: Mapping[str, VersionChange]) -> bool:
    identifiers = apps | app_versions.keys()
    if not identifiers:
        return False
    for identifier, minimum in _rows(session, _CATALOGUED_MINIMUMS, {"identifiers": list(identifiers)}):
        if identifier in apps:
            return True  # a school app appeared, went, or changed hands: always the plan's business
        before, after = app_versions[identifier]
        if meets_minimum(before, minimum) != meets_minimum(after, minimum):
            return True
    return False


def _any_named(session: Session, statement: Any, identifiers: frozenset[str]) -> bool:
    # One query even for a report's 5,000 apps: within the 32,766 parameters of SQLite (3.32 and later,
    # as the batches of 1,000 ids elsewhere already need) and PostgreSQL's 65,535.
    return bool(identifiers) and _rows(session, statement, {"identifiers": list(identifiers)}).first() is not None


# --- Loading ---------------------------------------------------------------------------------------


def load_catalogue(session: Session) -> Catalogue:
    scopes: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for owner_id, kind, value in _rows(session, _SCOPES, {}):
        scopes[owner_id][kind].add(value)
    # Columns, not entities: a profile's payloads (JSON) are not needed to decide who gets it.
    every_profile = _rows(session, _PROFILES, {}).all()
    profiles = [
        ProfileSpec(
            profile_id,
            identifier,
            version,
            is_network,
            frozenset(scopes[profile_id]["category"]),
            frozenset(scopes[profile_id]["group"]),
            frozenset(scopes[profile_id]["network"]),
        )
        for profile_id, identifier, version, is_network, deleted_at in every_profile
        if deleted_at is None
    ]
    app_rows = _rows(session, _APPS, {}).all()
    apps = [
        AppSpec(
            app_id,
            identifier,
            platform,
            licence == "school",
            min_version,
            frozenset(scopes[app_id]["category"]),
            frozenset(scopes[app_id]["group"]),
        )
        for app_id, identifier, platform, licence, min_version, _deleted_at in app_rows
    ]
    live_apps = [spec for spec, row in zip(apps, app_rows, strict=True) if row.deleted_at is None]
    return Catalogue(
        profiles=profiles,
        school_profile_identifiers={row.identifier for row in every_profile},
        apps=live_apps,
        apps_by_id={a.id: a for a in apps},
    )


_SCOPES = select(ScopeRule.owner_id, ScopeRule.kind, ScopeRule.value)
# Deleted ones included: the reconciler still removes what the school put on devices of them. An app
# may be catalogued once per platform, so each of its rows' minimums is checked.
_CATALOGUED_MINIMUMS = select(App.identifier, App.min_version).where(
    col(App.identifier).in_(bindparam("identifiers", expanding=True))
)
_CATALOGUED_PROFILES = (
    select(Profile.id).where(col(Profile.identifier).in_(bindparam("identifiers", expanding=True))).limit(1)
)
_PROFILES = select(Profile.id, Profile.identifier, Profile.version, Profile.is_network, Profile.deleted_at)
_APPS = select(App.id, App.identifier, App.platform, App.licence, App.min_version, App.deleted_at)


def selected_devices(selector: DeviceSelector) -> Select[Any]:
    statement = select(Device.id).where(col(Device.state).in_(MANAGED_STATES))
    if not selector.everyone:
        conditions = []
        if selector.device_ids:
            conditions.append(col(Device.id).in_(selector.device_ids))
        if selector.categories:
            conditions.append(col(Device.category).in_(selector.categories))
        if selector.person_ids:
            conditions.append(col(Device.person_id).in_(selector.person_ids))
        statement = statement.where(or_(*conditions))
    return statement.order_by(Device.id)


def _device_batches(session: Session, selector: DeviceSelector) -> Iterator[list[str]]:
    # The ids are read up front: the batches below write to tables this query does not read.
    if _only_devices(selector):  # a check-in or an enrolment: the common case, with a ready statement
        device_ids = list(_rows(session, _MANAGED_AMONG, {"ids": sorted(selector.device_ids)}).scalars())
    else:
        device_ids = list(session.exec(selected_devices(selector)))
    yield from chunks(device_ids, BATCH_SIZE)


def _only_devices(selector: DeviceSelector) -> bool:
    return not (selector.everyone or selector.categories or selector.person_ids)


def network_access_expression() -> Any:
    """A quarantined device, or one whose category is not allowed, gets no network access."""
    return case(
        (col(Device.quarantined_at).is_not(None), "none"),
        (AccessRule.allowed, AccessRule.network_access),
        else_="none",
    )


def batch_facts(session: Session, batch: list[str]) -> dict[str, DeviceFacts]:
    groups: dict[str, set[str]] = defaultdict(set)
    for device_id, group in _rows(session, _GROUPS, {"ids": batch}):
        groups[device_id].add(group)
    return {
        device_id: DeviceFacts(device_id, state, category, platform, access, frozenset(groups[device_id]))
        for device_id, state, category, platform, access in _rows(session, _FACTS, {"ids": batch})
    }


def desired_for(facts: DeviceFacts, catalogue: Catalogue) -> tuple[list[ProfileSpec], list[AppSpec]]:
    """The profiles and apps a device should carry, for other domains (compliance) to check against.

    Devices alike in category, platform, access and groups want the same things: worked out once each.
    """
    key = (facts.state, facts.category, facts.platform, facts.network_access, facts.groups)
    cached = catalogue.desired_cache.get(key)
    if cached is None:
        profiles = [p for p in catalogue.profiles if profile_reasons(facts, p) is not None]
        cached = (profiles, [a for a in catalogue.apps if app_reasons(facts, a) is not None])
        catalogue.desired_cache[key] = cached
    return cached


def device_facts(session: Session, device_id: str) -> DeviceFacts | None:
    return batch_facts(session, [device_id]).get(device_id)


def batch_reported(session: Session, batch: list[str]) -> dict[str, Reported]:
    reported: dict[str, Reported] = {device_id: Reported() for device_id in batch}
    parameters = {"ids": batch}
    for device_id, identifier, version in _rows(session, _REPORTED_PROFILES, parameters):
        reported[device_id].profiles[identifier] = version
    for device_id, identifier, version, managed in _rows(session, _REPORTED_APPS, parameters):
        reported[device_id].apps[identifier] = ReportedApp(version, bool(managed))
    for device_id, app_id, status in _rows(session, _SCHOOL_INSTALLS, parameters):
        reported[device_id].school_installs[app_id] = status
    for device_id, command_id, target, intent in _rows(session, _OPEN_TARGETED_COMMANDS, parameters):
        reported[device_id].open_commands[target] = (command_id, intent or "")
    return reported


def _rows(session: Session, statement: Any, parameters: dict[str, Any]) -> Any:
    """A ready statement's plain rows through the session's connection: no ORM bookkeeping per row.

    Reconciling one device after a check-in or an enrolment runs ten of these, and building and running
    each through the ORM cost more than the query; the session is flushed first, as an ORM query would
    autoflush, so the rows include what the caller has just changed.
    """
    session.flush()
    return session.connection().execute(statement, parameters)


# Built once: the device ids are one list parameter, so each runs for a batch of any size.
_MANAGED_AMONG = select(Device.id).where(among(Device.id), one_of(Device.state, MANAGED_STATES)).order_by(Device.id)
_GROUPS = (
    select(Device.id, PersonGroup.group_name)
    .join(PersonGroup, PersonGroup.person_id == Device.person_id)  # type: ignore[arg-type]
    .where(among(Device.id))
)
_FACTS = (
    select(Device.id, Device.state, Device.category, Device.platform, network_access_expression())
    .join(AccessRule, AccessRule.category == Device.category)  # type: ignore[arg-type]
    .where(among(Device.id))
)
_REPORTED_PROFILES = select(DeviceProfile.device_id, DeviceProfile.identifier, DeviceProfile.version).where(
    among(DeviceProfile.device_id)
)
# Only the apps the catalogue names, deleted ones too: a plan reads no others (profiles/planning.py),
# and of a device's 60 apps most are the family's. Reading them all was the reconcile's biggest read.
_REPORTED_APPS = select(DeviceApp.device_id, DeviceApp.identifier, DeviceApp.version, DeviceApp.managed).where(
    among(DeviceApp.device_id), col(DeviceApp.identifier).in_(select(App.identifier))
)
_SCHOOL_INSTALLS = select(SchoolInstall.device_id, SchoolInstall.app_id, SchoolInstall.status).where(
    among(SchoolInstall.device_id)
)
_OPEN_TARGETED_COMMANDS = (
    select(Command.device_id, Command.id, Command.target, Command.intent)
    .where(among(Command.device_id), one_of(Command.status, OPEN_STATUSES), col(Command.target).like("%:%"))
    .order_by(Command.id)
)


# --- Writing ---------------------------------------------------------------------------------------


def _apply(
    session: Session,
    plans: list[DevicePlan],
    reported: dict[str, Reported],
    summary: RunSummary,
) -> None:
    now = utcnow()
    _cancel(session, [command_id for plan in plans for command_id in plan.cancel], now, summary)
    for plan in plans:
        for app_id in plan.release:
            session.execute(
                delete(SchoolInstall).where(SchoolInstall.device_id == plan.device_id, SchoolInstall.app_id == app_id)
            )  # type: ignore[arg-type]
            reported[plan.device_id].school_installs.pop(app_id, None)
    granted = _grant_licences(session, plans)
    commands, installs = [], []
    for plan in plans:
        for action in plan.queue:
            app = action.app
            if action.type == "InstallApplication" and app and app.licensed and (plan.device_id, app.id) not in granted:
                continue  # no licence left in the pool: no install, and the app shows the shortage
            command = _command_row(plan.device_id, action, now)
            commands.append(command)
            if action.type == "InstallApplication" and app and app.id not in reported[plan.device_id].school_installs:
                # The service's own record that the school put this app there, made before the command goes.
                installs.append(
                    {
                        "device_id": plan.device_id,
                        "app_id": app.id,
                        "status": "reserved",
                        "command_id": command["id"],
                        "reserved_at": now,
                    }
                )
    for batch in chunks(commands):
        session.execute(insert(Command), batch)
    for batch in chunks(installs):
        session.execute(insert(SchoolInstall), batch)
    summary.queued += len(commands)


def _cancel(session: Session, command_ids: list[str], now: Any, summary: RunSummary) -> None:
    for batch in chunks(command_ids):
        session.execute(
            update(Command)
            .where(col(Command.id).in_(batch), col(Command.status).in_(OPEN_STATUSES))
            .values(status=CommandStatus.cancelled.value, answered_at=now, result_detail="superseded by the reconciler")
        )
    summary.cancelled += len(command_ids)


def _grant_licences(session: Session, plans: list[DevicePlan]) -> set[tuple[str, str]]:
    """Reserves pool licences for the installs that need one; a pool never goes below zero."""
    wanted: dict[str, list[str]] = defaultdict(list)
    for plan in plans:
        for action in plan.queue:
            if action.type == "InstallApplication" and action.app and action.app.licensed:
                wanted[action.app.id].append(plan.device_id)
    granted: set[tuple[str, str]] = set()
    for app_id, device_ids in sorted(wanted.items()):
        holders = set(session.exec(select(SchoolInstall.device_id).where(SchoolInstall.app_id == app_id)))
        needing = [d for d in device_ids if d not in holders]
        granted.update((d, app_id) for d in device_ids if d in holders)  # re-install: the licence is held
        if not needing:
            continue
        # Locking the app row serialises reservations from concurrent reconciles on PostgreSQL.
        app = session.exec(select(App).where(App.id == app_id).with_for_update()).one()
        free = max(app.licences_total - len(holders), 0)
        granted.update((d, app_id) for d in needing[:free])  # the rest show as the app's licences_short
    return granted


def _command_row(device_id: str, action: Action, now: Any) -> dict[str, Any]:
    return {
        "id": new_id(),
        "device_id": device_id,
        "type": action.type,
        "payload": _intent(action).payload(),
        "target": action.target,
        "intent": action.intent,
        "status": CommandStatus.queued.value,
        "created_at": now,
        "created_by": RECONCILER,
        "deliveries": 0,
        "not_now_count": 0,
    }


def _intent(action: Action) -> intents.Intent:
    """The command's intent: only what it is about, never the rendered profile (its adapter does that)."""
    identifier = action.target.split(":", 1)[1]
    if action.type == "InstallProfile" and action.profile is not None:
        return intents.InstallProfile(identifier=identifier, version=action.profile.version)
    if action.type == "InstallApplication":
        return intents.InstallApplication(identifier=identifier, version=action.app.min_version if action.app else None)
    if action.type == "RemoveProfile":
        return intents.RemoveProfile(identifier=identifier)
    return intents.RemoveApplication(identifier=identifier)


# --- Explaining it ---------------------------------------------------------------------------------


def explain(session: Session, device_id: str) -> dict[str, Any]:
    """What the reconciler wants for one device and why: the same facts and rules, shown to a technician."""
    catalogue = load_catalogue(session)
    facts = batch_facts(session, [device_id])[device_id]
    reported = batch_reported(session, [device_id])[device_id]
    plan = plan_device(
        facts, catalogue.profiles, catalogue.school_profile_identifiers, catalogue.apps, catalogue.apps_by_id, reported
    )
    items = []
    for profile in catalogue.profiles:
        reasons = profile_reasons(facts, profile)
        if reasons is None:
            continue
        version = reported.profiles.get(profile.identifier)
        status = (
            "installed" if version == profile.version else ("missing" if version is None else f"at version {version}")
        )
        items.append(_item("profile", profile.identifier, str(profile.version), reasons, status, reported))
    for app in catalogue.apps:
        reasons = app_reasons(facts, app)
        if reasons is None:
            continue
        on_device = reported.apps.get(app.identifier)
        if on_device is None:
            status = (
                "missing"
                if app.id in reported.school_installs or not app.licensed
                else "missing (waiting for a licence)"
            )
        elif not on_device.managed:
            status = "installed by the family: not managed, left alone"
        else:
            status = (
                "installed" if meets_minimum(on_device.version, app.min_version) else f"outdated ({on_device.version})"
            )
        items.append(_item("app", app.identifier, app.min_version, reasons, status, reported))
    removals = [
        _item(
            "profile" if a.type == "RemoveProfile" else "app",
            a.target.split(":", 1)[1],
            None,
            ["no longer in the device's desired state"],
            "to be removed",
            reported,
        )
        for a in plan.queue
        if a.type.startswith("Remove")
    ]
    return {
        "device_id": device_id,
        "state": facts.state,
        "network_access": facts.network_access,
        "items": items,
        "removals": removals,
    }


def _item(
    kind: str, identifier: str, version: str | None, because: list[str], status: str, reported: Reported
) -> dict[str, Any]:
    pending = reported.open_commands.get(f"{kind}:{identifier}")
    return {
        "kind": kind,
        "identifier": identifier,
        "version": version,
        "because": because,
        "reported": status,
        "pending_command": pending[0] if pending else None,
    }
