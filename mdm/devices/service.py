"""The device registry: pre-registration (one by one or by CSV), lookups and filtered lists."""

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Select, bindparam, insert, update
from sqlalchemy import select as sql_select
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from mdm import desired_state
from mdm.access_policy.models import AccessRule
from mdm.actor import Actor
from mdm.audit.service import record
from mdm.categories import SCHOOL_OWNED, Category, NetworkAccess
from mdm.csv_import import (
    DEFAULT_MAX_ROWS,
    ImportResult,
    RowError,
    chunks,
    invalid_lines,
    parse_csv,
    row_error_from_validation,
    validate_rows,
)
from mdm.database import Queryable, among, refresh_statistics
from mdm.devices.models import (
    ComplianceStatus,
    ComplianceSummary,
    Device,
    DeviceCertificate,
    DevicePublic,
    DeviceRegister,
    DeviceState,
    HoldChange,
    Identity,
    PkiState,
)
from mdm.errors import Conflict, Invalid, NotFound
from mdm.ids import new_id, utcnow
from mdm.pagination import Page, PageParams, paginate
from mdm.people import service as people

CSV_REQUIRED = {"serial", "platform"}
CSV_OPTIONAL = {"model", "category", "asset_tag", "person_external_id"}
Progress = Callable[[str, int, int], None]
PKI_STATE_ID = 1


def _school_owned_only(data: DeviceRegister) -> None:
    if data.category not in SCHOOL_OWNED:
        raise Invalid(
            "Only school-owned devices are pre-registered; personal devices register themselves when they enrol.",
            [{"field": "category", "message": "must be school_single_user or school_shared"}],
        )


def register_device(session: Session, data: DeviceRegister, actor: Actor) -> DevicePublic:
    _school_owned_only(data)
    if data.person_id is not None and session.get(people.Person, data.person_id) is None:
        raise Invalid("The person does not exist.", [{"field": "person_id", "message": f"no person {data.person_id}"}])
    existing = find_by_serial(session, data.serial)
    if existing is not None:
        raise Conflict(f"A device with serial {data.serial} is registered already.", existing_id=existing.id)
    now = utcnow()
    device = Device.model_validate(
        {
            **data.model_dump(mode="json"),
            "id": new_id(),
            "state": DeviceState.registered.value,
            "created_at": now,
            "updated_at": now,
        }
    )
    session.add(device)
    session.flush()
    record(session, actor, "device.register", "device", device.id, data.model_dump(mode="json"))
    return get_device(session, device.id)


def find_by_serial(session: Session, serial: str) -> Device | None:
    return session.exec(select(Device).where(Device.serial == serial)).first()


def require_device(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFound("device", device_id)
    return device


def devices_query() -> Select[Any]:
    """Devices with their category's policy, which decides the network access they are given."""
    return select(Device, AccessRule.allowed, AccessRule.network_access).join(
        AccessRule,
        AccessRule.category == Device.category,  # type: ignore[arg-type]
    )


def list_devices(
    session: Session,
    page: PageParams,
    *,
    state: DeviceState | None = None,
    category: Category | None = None,
    compliance: ComplianceStatus | None = None,
    person_id: str | None = None,
    serial: str | None = None,
) -> Page[DevicePublic]:
    statement = devices_query()
    filters = {
        Device.state: state,
        Device.category: category,
        Device.compliance_status: compliance,
        Device.person_id: person_id,
        Device.serial: serial.upper() if serial else None,
    }
    for column, value in filters.items():
        if value is not None:
            statement = statement.where(column == value)
    return paginate(session, statement, Device.id, page, lambda rows: [to_public(*row) for row in rows])


def network_access(allowed: bool, policy_access: str, quarantined: bool = False) -> NetworkAccess:
    """What the device gets on the school network: the category's policy; none when not allowed or quarantined."""
    return NetworkAccess(policy_access) if allowed and not quarantined else NetworkAccess.none


def to_public(device: Device, allowed: bool, policy_access: str) -> DevicePublic:
    compliance = ComplianceSummary(
        status=device.compliance_status,  # type: ignore[arg-type]
        failures=device.compliance_failures,
        evaluated_at=device.compliance_evaluated_at,
        failing_since=device.compliance_failing_since,
        quarantined_at=device.quarantined_at,
    )
    access = network_access(allowed, policy_access, device.quarantined_at is not None)
    return DevicePublic.model_validate({**device.model_dump(), "network_access": access, "compliance": compliance})


def get_device(session: Session, device_id: str) -> DevicePublic:
    row = session.exec(devices_query().where(Device.id == device_id)).first()  # type: ignore[call-overload]
    if row is None:
        raise NotFound("device", device_id)
    return to_public(*row)


# --- CSV import -----------------------------------------------------------------------------------


@dataclass
class _DeviceRow:
    register: DeviceRegister
    person_external_id: str | None


@dataclass
class _DeviceImportPlan:
    new_rows: list[dict[str, Any]] = field(default_factory=list)
    changed_rows: list[dict[str, Any]] = field(default_factory=list)
    unchanged: int = 0


def _check_csv_row(values: dict[str, str]) -> _DeviceRow:
    try:
        register = DeviceRegister.model_validate(
            {
                "serial": values["serial"],
                "platform": values["platform"].lower(),
                "category": (values.get("category") or "school_single_user").lower(),
                "model": values.get("model") or None,
                "asset_tag": values.get("asset_tag") or None,
            }
        )
    except ValidationError as exc:
        raise row_error_from_validation(exc) from exc
    if register.category not in SCHOOL_OWNED:
        raise RowError(
            [("category", "only school-owned devices are pre-registered (school_single_user, school_shared)")]
        )
    return _DeviceRow(register, values.get("person_external_id") or None)


def import_devices_csv(
    session: Session, data: bytes, actor: Actor, progress: Progress | None = None, max_rows: int = DEFAULT_MAX_ROWS
) -> ImportResult:
    """Upserts school stock by serial; all-or-nothing, like the people import."""
    parsed = parse_csv(data, CSV_REQUIRED, CSV_OPTIONAL, max_rows)
    checked = validate_rows(parsed, _check_csv_row, lambda r: r.register.serial, "serial")
    person_ids = people.ids_by_external_id(session, {r.person_external_id for _, r in checked if r.person_external_id})
    existing = _existing_by_serial(session, [r.register.serial for _, r in checked])
    plan = _plan_device_import(checked, person_ids, existing)
    _write_devices(session, plan, progress)
    summary = {
        "lines": len(checked),
        "created": len(plan.new_rows),
        "updated": len(plan.changed_rows),
        "unchanged": plan.unchanged,
        "created_serials": [r["serial"] for r in plan.new_rows],
        "updated_serials": [r["serial"] for r in plan.changed_rows],
    }
    record(session, actor, "device.import", "device", None, summary)
    desired_state.devices_changed(session, device_ids=[row["b_id"] for row in plan.changed_rows])
    return ImportResult(
        total=len(checked),
        created=len(plan.new_rows),
        updated=len(plan.changed_rows),
        unchanged=plan.unchanged,
        ignored_columns=parsed.ignored_columns,
    )


def _plan_device_import(
    checked: list[tuple[int, _DeviceRow]], person_ids: dict[str, str], existing: dict[str, dict[str, Any]]
) -> _DeviceImportPlan:
    errors: list[dict[str, Any]] = []
    plan = _DeviceImportPlan()
    now = utcnow()
    for line, row in checked:
        fields = row.register.model_dump(mode="json", exclude={"person_id"})
        if row.person_external_id:
            if row.person_external_id not in person_ids:
                errors.append(
                    {
                        "line": line,
                        "field": "person_external_id",
                        "message": f"no person {row.person_external_id}",
                    }
                )
                continue
            fields["person_id"] = person_ids[row.person_external_id]
        else:
            fields["person_id"] = None
        current = existing.get(fields["serial"])
        if current is None:
            plan.new_rows.append(
                {
                    **fields,
                    "id": new_id(),
                    "state": DeviceState.registered.value,
                    "held": False,
                    "compliance_status": "unknown",
                    "compliance_failures": [],
                    "created_at": now,
                    "updated_at": now,
                }
            )
        elif (refusal := _import_may_not_touch(current)) is not None:
            errors.append({"line": line, "field": "serial", "message": f"serial {fields['serial']} {refusal}"})
        elif current["platform"] != fields["platform"]:
            errors.append(
                {
                    "line": line,
                    "field": "platform",
                    "message": f"serial {fields['serial']} is registered as {current['platform']}",
                }
            )
        elif any(current[k] != fields[k] for k in ("model", "category", "asset_tag", "person_id")):
            plan.changed_rows.append({**fields, "b_id": current["id"], "updated_at": now})
        else:
            plan.unchanged += 1
    if errors:
        raise invalid_lines(errors)
    return plan


def _import_may_not_touch(current: dict[str, Any]) -> str | None:
    """Why an import row may not update this device, if it may not: imports manage school stock only.

    A serial is no secret, so a row must never turn a family's phone into school stock (its leaver's
    exit would then wipe it), nor reassign a device that is leaving.
    """
    if current["category"] not in SCHOOL_OWNED:
        return f"is a personal device ({current['category']}); imports only create or update school-owned devices"
    if current["state"] == DeviceState.exiting.value:
        return "is being offboarded; finish its exit before changing it"
    return None


def _existing_by_serial(session: Session, serials: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    columns = (
        Device.id,
        Device.serial,
        Device.platform,
        Device.model,
        Device.category,
        Device.asset_tag,
        Device.person_id,
        Device.state,
    )
    for chunk in chunks(serials):
        for row in session.exec(select(*columns).where(col(Device.serial).in_(chunk))):
            found[row.serial] = row._asdict()
    return found


def _write_devices(session: Session, plan: _DeviceImportPlan, progress: Progress | None) -> None:
    table = Device.__table__  # type: ignore[attr-defined]
    total, written = len(plan.new_rows) + len(plan.changed_rows), 0
    for batch in chunks(plan.new_rows):
        session.execute(insert(table), batch)
        written += len(batch)
        if progress:
            progress("writing", written, total)
    statement = (
        update(table)
        .where(table.c.id == bindparam("b_id"))
        .values({name: bindparam(name) for name in ("model", "category", "asset_tag", "person_id", "updated_at")})
    )
    for batch in chunks(plan.changed_rows):
        session.execute(statement, batch)
        written += len(batch)
        if progress:
            progress("writing", written, total)
    if total > 1000:
        refresh_statistics(session, "device")


# --- Identity certificates -------------------------------------------------------------------------


def add_certificate(
    session: Session, device_id: str, pem: str, serial_number: int, fingerprint: str, not_after: datetime
) -> DeviceCertificate:
    certificate = DeviceCertificate(
        serial_number=format(serial_number, "x"),
        device_id=device_id,
        certificate_pem=pem,
        fingerprint_sha256=fingerprint,
        issued_at=utcnow(),
        not_after=not_after,
    )
    session.add(certificate)
    session.flush()
    return certificate


def devices_by_id(session: Session, device_ids: Collection[str]) -> dict[str, Device]:
    """Many devices in one query, by id; an unknown id is absent."""
    return {device.id: device for device in session.exec(select(Device).where(col(Device.id).in_(device_ids)))}


def latest_certificates(session: Session, device_ids: Collection[str]) -> dict[str, DeviceCertificate]:
    """Each device's most recently issued certificate, in one query (a device holds a handful); never enrolled = absent."""
    statement = (
        select(DeviceCertificate)
        .where(col(DeviceCertificate.device_id).in_(device_ids))
        .order_by(col(DeviceCertificate.issued_at))
    )
    return {certificate.device_id: certificate for certificate in session.exec(statement)}


def certificate_by_serial(session: Queryable, serial_hex: str) -> Identity | None:
    """The identity certificate with this serial (hex), whichever device it was issued to."""
    row = session.execute(_IDENTITY_BY_SERIAL, {"serial": serial_hex}).first()
    return Identity(*row) if row is not None else None


def identity_candidates(session: Queryable, device_id: str) -> list[Identity]:
    """The certificates a device may sign with, newest first: its two newest, then any older one still live.

    An older live certificate means the device enrolled again and the new identity has not yet proven
    itself by signing a request: until it does, the old one keeps working (a re-enrolment started by
    someone else must not cut the real device off). The second newest is kept even when revoked, so a
    device whose identity was just superseded is told so (403), not that its signature is unknown.
    """
    # A device has a handful of certificates (one per enrolment): read them all, choose here.
    rows = session.execute(_IDENTITIES_OF_DEVICE, {"device_id": device_id})
    return choose_candidates([Identity(*row) for row in rows])


def choose_candidates(newest_first: list[Identity]) -> list[Identity]:
    """`identity_candidates`' choice among all of one device's certificates, given newest first."""
    return newest_first[:2] + [c for c in newest_first[2:] if c.revoked_at is None]


# Core, not the ORM: every check-in and Apple connect runs these (see Identity).
_certificate = DeviceCertificate.__table__  # type: ignore[attr-defined]
IDENTITY_COLUMNS = tuple(_certificate.c[field.name] for field in dataclass_fields(Identity))
NEWEST_FIRST = _certificate.c.issued_at.desc()
_IDENTITIES = sql_select(*IDENTITY_COLUMNS)
_IDENTITIES_OF_DEVICE = _IDENTITIES.where(_certificate.c.device_id == bindparam("device_id")).order_by(NEWEST_FIRST)
_IDENTITY_BY_SERIAL = _IDENTITIES.where(_certificate.c.serial_number == bindparam("serial"))


def revoke_certificates(session: Session, device_id: str, reason: str, *, keep: str | None = None) -> list[str]:
    """Revokes every live certificate of the device but `keep`; returns their serials (hex).

    The CRL number grows with every revocation, so relying parties can tell the new list from the old.
    """
    statement = select(DeviceCertificate).where(
        DeviceCertificate.device_id == device_id, col(DeviceCertificate.revoked_at).is_(None)
    )
    if keep is not None:
        statement = statement.where(DeviceCertificate.serial_number != keep)
    live = session.exec(statement).all()
    now = utcnow()
    for certificate in live:
        certificate.revoked_at, certificate.revocation_reason = now, reason
        session.add(certificate)
    session.flush()
    if live:
        _bump_crl(session, now)
    return [c.serial_number for c in live]


def _bump_crl(session: Session, now: datetime) -> None:
    state = session.exec(select(PkiState).where(PkiState.id == PKI_STATE_ID).with_for_update()).one()
    state.crl_number += 1
    state.crl_updated_at = now
    session.add(state)


def current_crl_number(session: Session) -> int:
    return session.exec(select(PkiState.crl_number).where(PkiState.id == PKI_STATE_ID)).one()


def revoked_certificates(session: Session) -> list[tuple[int, datetime]]:
    """(serial, revoked_at) of every revoked certificate, for the CRL."""
    statement = (
        select(DeviceCertificate.serial_number, DeviceCertificate.revoked_at)
        .where(col(DeviceCertificate.revoked_at).is_not(None))
        .order_by(DeviceCertificate.revoked_at)
    )
    return [(int(serial, 16), revoked_at) for serial, revoked_at in session.exec(statement)]  # type: ignore[misc]


# --- Lifecycle -------------------------------------------------------------------------------------


def lock_for_update(session: Session, device_id: str) -> Device:
    """The device row, locked: serialises check-ins and lifecycle changes of one device on PostgreSQL."""
    device = session.exec(_LOCKED_DEVICE, params={"device_id": device_id}).first()  # type: ignore[call-overload]
    if device is None:
        raise NotFound("device", device_id)
    return device


# Built once: every check-in that stores a report locks its device, and building the statement and its
# cache key each time cost as much as running it.
_LOCKED_DEVICE = (
    select(Device)
    .where(Device.id == bindparam("device_id"))
    .with_for_update()
    .execution_options(populate_existing=True)
)


def set_hold(session: Session, device_id: str, change: HoldChange, actor: Actor) -> Device:
    device = lock_for_update(session, device_id)
    if change.held and not change.reason:
        raise Invalid("Say why the device is held.", [{"field": "reason", "message": "required when holding"}])
    if device.held == change.held and device.held_reason == (change.reason if change.held else None):
        return device
    device.held = change.held
    device.held_reason = change.reason if change.held else None
    device.updated_at = utcnow()
    session.add(device)
    action = "device.hold" if change.held else "device.release"
    record(session, actor, action, "device", device.id, {"reason": change.reason})
    return device


def mark_checked_in(session: Session, device: Device, os_version: str | None, now: datetime) -> None:
    """The device (locked by the caller) was in touch now, and runs `os_version` when it said so.

    Written at once through Core, the loaded object told its new values as already stored: the ORM's
    flush of one changed row cost five times the UPDATE, on every check-in that stores a report.
    """
    values: dict[str, Any] = {"last_checkin_at": now}
    statement = _CHECKED_IN
    if os_version and os_version != device.os_version:
        values |= {"os_version": os_version, "updated_at": now}
        statement = _CHECKED_IN_ON_NEW_OS
    session.flush()  # what the session holds of this row goes first, as its own flush would have ordered it
    session.connection().execute(statement, {"b_id": device.id, **values})
    for key, value in values.items():
        set_committed_value(device, key, value)


_DEVICE_TABLE = Device.__table__  # type: ignore[attr-defined]
_CHECKED_IN = (
    update(_DEVICE_TABLE)
    .where(_DEVICE_TABLE.c.id == bindparam("b_id"))
    .values(last_checkin_at=bindparam("last_checkin_at"))
)
_CHECKED_IN_ON_NEW_OS = _CHECKED_IN.values(os_version=bindparam("os_version"), updated_at=bindparam("updated_at"))


def note_reported_facts(session: Session, device: Device, facts: dict[str, str | None], now: datetime) -> None:
    """The device's own word on its model and name (Apple's DeviceInformation), where it gave one."""
    reported = {key: value for key, value in facts.items() if key in ("model", "name") and value}
    changed = {key: value for key, value in reported.items() if getattr(device, key) != value}
    for key, value in changed.items():
        setattr(device, key, value)
    if changed:
        device.updated_at = now
        session.add(device)


def set_state(session: Session, device: Device, state: DeviceState, *, unassign: bool = False) -> None:
    device.state = state.value
    if unassign:
        device.person_id = None
    device.updated_at = utcnow()
    session.add(device)


# --- Compliance verdicts (written by the compliance domain) ----------------------------------------


def compliance_rows(session: Session, device_ids: list[str]) -> dict[str, Any]:
    """What the compliance run needs of each device, in one query per batch."""
    return {row.id: row for row in session.execute(_COMPLIANCE_COLUMNS, {"ids": device_ids})}


_COMPLIANCE_COLUMNS = select(
    Device.id,
    Device.platform,
    Device.category,
    Device.os_version,
    Device.person_id,
    Device.last_checkin_at,
    Device.enrolled_at,
    Device.compliance_status,
    Device.compliance_failures,
    Device.compliance_failing_since,
    Device.quarantined_at,
).where(among(Device.id))


def record_compliance(session: Session, changes: list[dict[str, Any]], evaluated: list[str], now: datetime) -> None:
    """Writes changed verdicts in bulk and stamps every evaluated device; unchanged devices cost one statement a batch."""
    if changes:
        statement = (
            update(Device.__table__)  # type: ignore[attr-defined]
            .where(Device.__table__.c.id == bindparam("b_id"))  # type: ignore[attr-defined]
            .values(
                compliance_status=bindparam("status"),
                compliance_failures=bindparam("failures"),
                compliance_failing_since=bindparam("failing_since"),
                quarantined_at=bindparam("quarantined_at"),
            )
        )
        session.execute(statement, changes)
    if evaluated:
        session.execute(_STAMP_EVALUATED, {"ids": evaluated, "now": now})


# The table, not the entity: stamping 1,000 devices needs none of the ORM's bookkeeping for loaded objects.
_STAMP_EVALUATED = (
    update(Device.__table__)  # type: ignore[attr-defined]
    .where(among(Device.__table__.c.id))  # type: ignore[attr-defined]
    .values(compliance_evaluated_at=bindparam("now"))
)
