"""Storing what a device reports; an unchanged report costs one indexed read and no writes.

A report is whole (the agent: every check-in carries everything, and a list it leaves out is empty) or
a piece (Apple: DeviceInformation, SecurityInfo, InstalledApplicationList and ProfileList come one query
at a time), which replaces only the fields it carries. Both are merged into one snapshot, hashed whole,
so a piece that changes nothing is recognised like an unchanged check-in.

Profile versions are the service's own fact: a profile is installed at a version once its InstallProfile
is acknowledged (`record_profile_installed`), whatever the device says back; Apple's ProfileList carries
no version at all. A reported version is taken, a missing one keeps the acknowledged one.

Callers hold the device's row lock (the device channel takes it when it authenticates the device), so a
report and a command result of the same device never interleave their read-modify-write of the snapshot.
"""

import hashlib
import json
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from sqlalchemy import bindparam, delete, insert, update
from sqlmodel import Session, col, select

from mdm.database import among, upsert
from mdm.hooks import VersionChange
from mdm.inventory.models import (
    DeviceApp,
    DeviceInventory,
    DeviceProfile,
    InstalledApp,
    Inventory,
    MalwareStatus,
    ReportedInventory,
)

ProfileEntry = dict[str, Any]  # {"identifier": ..., "version": ...} as the snapshot stores it


def document_hash(document: dict[str, Any]) -> str:
    ordered = dict(document)
    # Order of apps and profiles is the device's whim, not a change.
    for key in ("apps", "profiles"):
        if key in ordered:
            ordered[key] = sorted(ordered[key], key=lambda entry: entry["identifier"])
    return hashlib.sha256(json.dumps(ordered, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class InventoryChange:
    """What storing a report changed; false when nothing did.

    `apps` and `profiles`: the identifiers of the rows that appeared, went or changed, except the apps
    in `app_versions`: still there and managed as before, only at another version (an update). A report
    can change only its facts (an OS version, a passcode) and no row.
    """

    stored: bool
    apps: frozenset[str] = frozenset()
    profiles: frozenset[str] = frozenset()
    app_versions: Mapping[str, VersionChange] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.stored


UNCHANGED = InventoryChange(stored=False)


def store_inventory(
    session: Session,
    device_id: str,
    inventory: Inventory,
    now: datetime,
    *,
    partial: bool = False,
    report_hash: str | None = None,
) -> InventoryChange:
    """Stores the report unless it is what is stored already, and says what that changed.

    `partial`: only the fields the report carries (`inventory.model_fields_set`) replace what is stored.
    `report_hash`: the whole report's `whole_report_hash`, when the caller has worked it out already.
    """
    stored = _StoredInventory(session, device_id)
    known = None if partial else report_hash
    if known is not None and stored.content_hash == known:
        return UNCHANGED  # decided without dumping the report
    document, carried = _merged(session, stored, inventory, partial)
    digest = known or document_hash(document)
    if stored.content_hash == digest:
        return UNCHANGED
    stored.replace(document, digest, now)
    apps = _APP_ROWS.replace(session, device_id, document["apps"]) if "apps" in carried else {}
    profiles = _PROFILE_ROWS.replace(session, device_id, document["profiles"]) if "profiles" in carried else {}
    updates = {
        identifier: (before["version"], after["version"])
        for identifier, (before, after) in apps.items()
        if before is not None and after is not None and bool(before["managed"]) == bool(after["managed"])
    }
    return InventoryChange(
        stored=True, apps=frozenset(apps.keys() - updates.keys()), profiles=frozenset(profiles), app_versions=updates
    )


def whole_report_hash(inventory: Inventory) -> str | None:
    """The hash a whole report would be stored under, when it needs nothing stored to work out; else None.

    A report listing a profile without its version takes the acknowledged one from what is stored.
    """
    document = inventory.model_dump(mode="json")
    if any(profile["version"] is None for profile in document["profiles"]):
        return None
    return document_hash(document)


class _StoredInventory:
    """A device's stored inventory, read as little as the report needs.

    An unchanged whole report (every agent check-in, most of the day) is decided by the hash alone: the
    snapshot, 60 apps of JSON, is read only when a piece must be merged into it.
    """

    def __init__(self, session: Session, device_id: str) -> None:
        self._session, self.device_id = session, device_id
        self.content_hash: str | None = session.execute(_STORED_HASH, {"device_id": device_id}).scalar_one_or_none()

    @cached_property
    def snapshot(self) -> dict[str, Any] | None:
        if self.content_hash is None:
            return None
        return self._session.execute(_STORED_SNAPSHOT, {"device_id": self.device_id}).scalar_one()  # type: ignore[no-any-return]

    def replace(self, document: dict[str, Any], digest: str, now: datetime) -> None:
        values = {"reported_at": now, "content_hash": digest, "snapshot": document}
        if self.content_hash is None:
            self._session.execute(_INSERT_INVENTORY, {"device_id": self.device_id, **values})
        else:
            self._session.execute(_UPDATE_INVENTORY, {"b_device_id": self.device_id, **values})


# On the table, not the entity: a changed check-in needs none of the ORM's bulk-update bookkeeping.
_INVENTORY_TABLE = DeviceInventory.__table__  # type: ignore[attr-defined]
_INSERT_INVENTORY = insert(_INVENTORY_TABLE)
_UPDATE_INVENTORY = update(_INVENTORY_TABLE).where(_INVENTORY_TABLE.c.device_id == bindparam("b_device_id"))
_STORED_HASH = select(DeviceInventory.content_hash).where(DeviceInventory.device_id == bindparam("device_id"))
_STORED_SNAPSHOT = select(DeviceInventory.snapshot).where(DeviceInventory.device_id == bindparam("device_id"))


def _merged(
    session: Session, stored: _StoredInventory, inventory: Inventory, partial: bool
) -> tuple[dict[str, Any], set[str]]:
    """The document to store, and the fields this report carried (all of them when it is whole)."""
    carried = inventory.model_fields_set if partial else set(Inventory.model_fields)
    piece = inventory.model_dump(mode="json", include=carried if partial else None)
    if not partial and all(profile["version"] is not None for profile in piece["profiles"]):
        return piece, carried  # the agent's every check-in: nothing stored needs reading
    # Before the first report, what is known of the device is the profiles it acknowledged.
    known = stored.snapshot if stored.snapshot is not None else {"profiles": _acknowledged(session, stored.device_id)}
    if "profiles" in piece:
        piece["profiles"] = _keep_acknowledged_versions(piece["profiles"], known.get("profiles", ()))
    return ({**known, **piece} if partial else piece), carried


def _keep_acknowledged_versions(reported: list[ProfileEntry], stored: Iterable[ProfileEntry]) -> list[ProfileEntry]:
    known = {profile["identifier"]: profile["version"] for profile in stored}
    return [
        profile if profile["version"] is not None else {**profile, "version": known.get(profile["identifier"])}
        for profile in reported
    ]


def _acknowledged(session: Session, device_id: str) -> list[ProfileEntry]:
    rows = session.exec(
        select(DeviceProfile.identifier, DeviceProfile.version).where(DeviceProfile.device_id == device_id)
    )
    return [{"identifier": identifier, "version": version} for identifier, version in rows]


def stored_apps(session: Session, device_id: str) -> dict[str, InstalledApp]:
    """The apps the device last reported, by identifier: a piece about some of them is merged with these."""
    rows = session.exec(
        select(DeviceApp.identifier, DeviceApp.version, DeviceApp.managed).where(DeviceApp.device_id == device_id)
    )
    return {
        identifier: InstalledApp(identifier=identifier, version=version, managed=managed)
        for identifier, version, managed in rows
    }


RowChange = tuple[dict[str, Any] | None, dict[str, Any] | None]  # a row's columns (before, after)


class _ReportedRows:
    """A device's reported rows in one table (its apps, or its profiles), kept equal to its last report.

    A changed check-in usually differs from the last in one app of sixty: deleting and inserting all
    sixty rewrote every row and its index entries for one that changed, so only the difference is
    written. Through Core: the ORM's bulk INSERT handled each row in Python at more cost than the statement.
    """

    def __init__(self, table: Any) -> None:
        self._table = table
        self._columns = [column.name for column in table.c if column.name != "device_id"]  # identifier first
        self._stored = select(*(table.c[name] for name in self._columns)).where(
            table.c.device_id == bindparam("device_id")
        )
        self._delete = delete(table).where(
            table.c.device_id == bindparam("device_id"),
            table.c.identifier.in_(bindparam("identifiers", expanding=True)),
        )

    def replace(self, session: Session, device_id: str, rows: list[Any]) -> dict[str, RowChange]:
        """The device's rows become `rows` (a duplicate identifier keeps its last entry); the rows that
        appeared, went or changed, by identifier: (its values before, after; None where there was none)."""
        session.flush()  # what the ORM holds goes first, as its own statements would have flushed it
        connection = session.connection()
        stored = {row[0]: tuple(row) for row in connection.execute(self._stored, {"device_id": device_id})}
        wanted = {row["identifier"]: tuple(row.get(column) for column in self._columns) for row in rows}
        stale = [identifier for identifier, values in stored.items() if wanted.get(identifier) != values]
        fresh = [values for identifier, values in wanted.items() if stored.get(identifier) != values]
        if stale:
            connection.execute(self._delete, {"device_id": device_id, "identifiers": stale})
        if fresh:
            connection.execute(
                insert(self._table),
                [{"device_id": device_id, **dict(zip(self._columns, values, strict=True))} for values in fresh],
            )
        return {
            identifier: (self._named(stored.get(identifier)), self._named(wanted.get(identifier)))
            for identifier in {*stale, *(values[0] for values in fresh)}
        }

    def _named(self, values: tuple[Any, ...] | None) -> dict[str, Any] | None:
        return None if values is None else dict(zip(self._columns, values, strict=True))


_APP_ROWS = _ReportedRows(DeviceApp.__table__)  # type: ignore[attr-defined]
_PROFILE_ROWS = _ReportedRows(DeviceProfile.__table__)  # type: ignore[attr-defined]


# --- What acknowledged commands establish ------------------------------------------------------------


def record_profile_installed(session: Session, device_id: str, identifier: str, version: int) -> None:
    """The device acknowledged InstallProfile: the profile is on it at this version."""
    upsert(session, DeviceProfile, {"device_id": device_id, "identifier": identifier, "version": version})
    _update_snapshot_profiles(session, device_id, identifier, {"identifier": identifier, "version": version})


def record_profile_removed(session: Session, device_id: str, identifier: str) -> None:
    """The device acknowledged RemoveProfile: the profile is gone."""
    session.execute(
        delete(DeviceProfile).where(
            col(DeviceProfile.device_id) == device_id, col(DeviceProfile.identifier) == identifier
        )
    )
    _update_snapshot_profiles(session, device_id, identifier, None)


def _update_snapshot_profiles(
    session: Session, device_id: str, identifier: str, replacement: ProfileEntry | None
) -> None:
    """The snapshot (and its hash) follow the rows, so the device reporting just that is no change."""
    current = session.get(DeviceInventory, device_id, populate_existing=True)  # reports are written with Core
    if current is None:
        return  # never reported: the first piece starts from the rows
    profiles = [p for p in current.snapshot.get("profiles", ()) if p["identifier"] != identifier]
    document = {**current.snapshot, "profiles": [*profiles, replacement] if replacement else profiles}
    current.snapshot, current.content_hash = document, document_hash(document)
    session.add(current)


# --- Reading ---------------------------------------------------------------------------------------


def installed_identifiers(session: Session, device_ids: Collection[str]) -> dict[str, list[str]]:
    """The identifiers of every app each device last reported, sorted, in one query; none reported = absent."""
    statement = (
        select(DeviceApp.device_id, DeviceApp.identifier)
        .where(col(DeviceApp.device_id).in_(device_ids))
        .order_by(DeviceApp.identifier)
    )
    identifiers: dict[str, list[str]] = defaultdict(list)
    for device_id, identifier in session.exec(statement):
        identifiers[device_id].append(identifier)
    return identifiers


def reported_inventories(session: Session, device_ids: list[str]) -> dict[str, ReportedInventory]:
    """Each device's merged inventory, typed, in two queries for the whole list; absent = never reported."""
    session.flush()  # plain rows through the connection: include what this session has just written
    connection, parameters = session.connection(), {"ids": device_ids}
    profiles: dict[str, dict[str, int | None]] = defaultdict(dict)
    for device_id, identifier, version in connection.execute(_PROFILES_OF_DEVICES, parameters):
        profiles[device_id][identifier] = version
    snapshots = connection.execute(_SNAPSHOTS_OF_DEVICES, parameters)
    return {device_id: _typed(snapshot, profiles.get(device_id, {})) for device_id, snapshot in snapshots}


# Built once, for a batch of any size: the nightly run reads 100 batches of 1,000.
_PROFILES_OF_DEVICES = select(DeviceProfile.device_id, DeviceProfile.identifier, DeviceProfile.version).where(
    among(DeviceProfile.device_id)
)
_SNAPSHOTS_OF_DEVICES = select(DeviceInventory.device_id, DeviceInventory.snapshot).where(
    among(DeviceInventory.device_id)
)


def _typed(snapshot: dict[str, Any], profiles: dict[str, int | None]) -> ReportedInventory:
    # The stored entries as they are, no copy: this is the hot loop of the nightly run (60 apps a device).
    apps: dict[str, InstalledApp] = {app["identifier"]: app for app in snapshot.get("apps", ())}
    return ReportedInventory(
        os_version=snapshot.get("os_version"),
        build=snapshot.get("build"),
        passcode_set=snapshot.get("passcode_set"),
        passcode_length=snapshot.get("passcode_length"),
        passcode_compliant=snapshot.get("passcode_compliant"),
        encrypted=snapshot.get("encrypted"),
        jailbroken=snapshot.get("jailbroken"),
        malware_protection=_malware(snapshot.get("malware_protection")),
        apps=apps,
        profiles=profiles,
    )


def _malware(reported: dict[str, Any] | None) -> MalwareStatus | None:
    if reported is None:
        return None
    updated = reported.get("definitions_updated_at")
    # Stored by pydantic's JSON mode: ISO 8601, UTC written as "Z".
    updated_at = datetime.fromisoformat(updated.replace("Z", "+00:00")) if updated else None
    return MalwareStatus(enabled=bool(reported.get("enabled")), definitions_updated_at=updated_at)
