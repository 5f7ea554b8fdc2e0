"""The device channel's protocol-neutral core: the few things every protocol adapter asks of the service.

An adapter proves who is talking in its own way (the agent's request signature, Apple's CMS signature)
and hands the core the certificate that made the proof. The core decides whether that identity may
talk (authorisation), stores what the device reported (whole, or one piece at a time as Apple answers),
hands over the commands due as intents for the adapter to render, and records the answers. The shape of
NanoMDM's service interface: the HTTP and the wire format stay in the adapter.

A revoked or expired certificate, or a device no longer managed, is 403 on every protocol alike.

Most connects change nothing: a converged device reports what it reported last time and has no
commands waiting. `read_device` reads what decides that before any write lock is taken, and
`pass_quietly` then records the check-in in one conditional UPDATE. Its WHERE clause repeats every
condition the read saw, so whatever changed in between (a revocation, a retirement, a queued command,
another report) makes it touch nothing, and the adapter takes the full path inside the same transaction.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, exists, select, update
from sqlmodel import Session

from mdm import desired_state
from mdm.actor import Actor
from mdm.audit.service import record
from mdm.commands import service as commands
from mdm.commands.intents import Intent, intent_of
from mdm.commands.models import OPEN_STATUSES, Command, CommandResult
from mdm.database import Queryable, one_of
from mdm.devices import service as devices
from mdm.devices.models import Device, DeviceCertificate, DeviceState, Identity
from mdm.errors import ProblemError
from mdm.inventory.models import DeviceInventory, Inventory
from mdm.inventory.service import store_inventory

REFUSED_STATES = {DeviceState.retired.value: "retired", DeviceState.in_stock.value: "wiped and back in stock"}


def identity_candidates(session: Queryable, device_id: str) -> list[Identity]:
    """The certificates the device may prove itself with, newest first ([] for an unknown device)."""
    return devices.identity_candidates(session, device_id)


def admit(session: Session, device_id: str, proven: Identity, candidates: list[Identity], now: datetime) -> Device:
    """The device, locked for the rest of the transaction, once the identity that proved it may still talk.

    `proven` is the candidate whose key made the adapter's signature. When it is the newest and an older
    identity is still live, the device has proven its re-enrolment: only now is the old one revoked.
    """
    device = devices.lock_for_update(session, device_id)
    refuse_unless_admissible(proven, device.state, now)
    if _proves_reenrolment(proven, candidates):
        _supersede_older_identities(session, device, proven)
    return device


def refuse_unless_admissible(proven: Identity, device_state: str, now: datetime) -> None:
    """403 when the identity is revoked or expired, or the device is no longer managed."""
    if proven.revoked_at is not None:
        raise ProblemError(403, "This device's certificate has been revoked; enrol it again to manage it.")
    if proven.not_after <= now:
        raise ProblemError(403, "This device's certificate has expired; enrol it again.")
    if device_state in REFUSED_STATES:
        raise ProblemError(403, f"This device is {REFUSED_STATES[device_state]}; it is no longer managed.")


def _proves_reenrolment(proven: Identity, candidates: list[Identity]) -> bool:
    return proven is candidates[0] and any(c.revoked_at is None for c in candidates[1:])


@dataclass(frozen=True)
class Standing:
    """A device as a read outside any write lock sees it: what decides whether a connect changes anything."""

    state: str
    os_version: str | None
    inventory_hash: str | None
    has_open_commands: bool

    def is_quiet(self, proven: Identity, candidates: list[Identity]) -> bool:
        """Nothing to store, deliver or revoke: the connect only says the device is still there."""
        return not self.has_open_commands and not _proves_reenrolment(proven, candidates)


def read_device(connection: Queryable, device_id: str) -> tuple[list[Identity], Standing | None]:
    """In one query, before any write lock: the device's identity candidates and its standing; ([], None) if unknown."""
    rows = connection.execute(_BY_DEVICE, {"device_id": device_id}).all()
    return devices.choose_candidates(_identities(rows)), _standing(rows)


def read_device_of_certificate(
    connection: Queryable, serial_hex: str
) -> tuple[Identity | None, list[Identity], Standing | None]:
    """`read_device` for the device this certificate (hex serial) was issued to, with the certificate itself."""
    rows = connection.execute(_BY_CERTIFICATE, {"serial": serial_hex}).all()
    identities = _identities(rows)
    own = next((identity for identity in identities if identity.serial_number == serial_hex), None)
    return own, devices.choose_candidates(identities), _standing(rows)


def _identities(rows: Sequence[Any]) -> list[Identity]:
    return [Identity(*row[: len(devices.IDENTITY_COLUMNS)]) for row in rows]


def _standing(rows: Sequence[Any]) -> Standing | None:
    return Standing(*rows[0][len(devices.IDENTITY_COLUMNS) :]) if rows else None


def pass_quietly(
    executor: Queryable,
    device_id: str,
    proven: Identity,
    seen: Standing,
    now: datetime,
    *,
    report_hash: str | None = None,
) -> bool:
    """Records a check-in that changes nothing else; False, touching nothing, when anything moved since `seen`.

    `report_hash`: the hash of the whole inventory the device just reported, which must be the stored one.
    Without it (Apple's idle connect carries no inventory) the stored inventory is left as it is.
    """
    values = {"device_id": device_id, "proven_serial": proven.serial_number, "now": now, "seen_os": seen.os_version}
    if report_hash is None:
        return bool(executor.execute(_QUIET_CHECKIN, values).rowcount)  # type: ignore[attr-defined]
    return bool(executor.execute(_QUIET_CHECKIN_WITH_REPORT, {**values, "report_hash": report_hash}).rowcount)  # type: ignore[attr-defined]


# Core tables, not ORM entities: every agent check-in and every Apple connect runs these, and the ORM's
# statement machinery (identity map, update synchronisation) costs more than the statements themselves.
_device = Device.__table__  # type: ignore[attr-defined]
_certificate = DeviceCertificate.__table__  # type: ignore[attr-defined]
_inventory = DeviceInventory.__table__  # type: ignore[attr-defined]
_command = Command.__table__  # type: ignore[attr-defined]

_OPEN_COMMANDS = exists().where(_command.c.device_id == _device.c.id, one_of(_command.c.status, OPEN_STATUSES))
# Each of the device's certificates (a handful), newest first, with the device's standing beside each.
_IDENTITIES_AND_STANDING = (
    select(*devices.IDENTITY_COLUMNS, _device.c.state, _device.c.os_version, _inventory.c.content_hash, _OPEN_COMMANDS)
    .select_from(
        _certificate.join(_device, _device.c.id == _certificate.c.device_id).outerjoin(
            _inventory, _inventory.c.device_id == _device.c.id
        )
    )
    .order_by(devices.NEWEST_FIRST)
)
_BY_DEVICE = _IDENTITIES_AND_STANDING.where(_certificate.c.device_id == bindparam("device_id"))
_signer = _certificate.alias("signer")
_BY_CERTIFICATE = _IDENTITIES_AND_STANDING.where(
    _certificate.c.device_id
    == select(_signer.c.device_id).where(_signer.c.serial_number == bindparam("serial")).scalar_subquery()
)
_STILL_QUIET = and_(
    _device.c.id == bindparam("device_id"),
    ~one_of(_device.c.state, REFUSED_STATES),
    _device.c.os_version.is_not_distinct_from(bindparam("seen_os")),
    exists().where(
        _certificate.c.serial_number == bindparam("proven_serial"),
        _certificate.c.device_id == _device.c.id,
        _certificate.c.revoked_at.is_(None),
        _certificate.c.not_after > bindparam("now"),
    ),
    ~_OPEN_COMMANDS,
)
_QUIET_CHECKIN = update(_device).where(_STILL_QUIET).values(last_checkin_at=bindparam("now"))
_QUIET_CHECKIN_WITH_REPORT = (
    update(_device)
    .where(
        _STILL_QUIET,
        exists().where(_inventory.c.device_id == _device.c.id, _inventory.c.content_hash == bindparam("report_hash")),
    )
    .values(last_checkin_at=bindparam("now"))
)


def _supersede_older_identities(session: Session, device: Device, proven: Identity) -> None:
    serials = devices.revoke_certificates(
        session, device.id, "superseded: the device enrolled again", keep=proven.serial_number
    )
    actor = Actor(kind="device", id=device.id, name=device.id)
    summary = {"certificate": proven.serial_number, "revoked_certificates": serials}
    record(session, actor, "device.identity_confirmed", "device", device.id, summary)


def report_inventory(
    session: Session,
    device: Device,
    inventory: Inventory,
    now: datetime,
    *,
    partial: bool = False,
    report_hash: str | None = None,
) -> None:
    """Stores what the device reported and reconciles it when that changed; it counts as a check-in.

    `partial`: the report carries only some facts (Apple answers one query at a time); the rest stay.
    `report_hash`: a whole report's `whole_report_hash`, when the adapter has it already.
    """
    change = store_inventory(session, device.id, inventory, now, partial=partial, report_hash=report_hash)
    if change:
        desired_state.report_changed(
            session, device.id, apps=change.apps, profiles=change.profiles, app_versions=change.app_versions
        )
    devices.mark_checked_in(session, device, inventory.os_version, now)


def checked_in(session: Session, device: Device, now: datetime) -> None:
    """The device was in touch without reporting anything (Apple's idle connect)."""
    devices.mark_checked_in(session, device, None, now)


def next_commands(
    session: Session,
    device_id: str,
    now: datetime,
    redelivery: timedelta,
    limit: int = commands.MAX_COMMANDS_PER_CHECKIN,
) -> list[tuple[Command, Intent]]:
    """The commands due, oldest first, marked sent, each with the intent its adapter renders."""
    return [
        (command, intent_of(command)) for command in commands.deliver_due(session, device_id, now, redelivery, limit)
    ]


def withdraw(session: Session, command: Command, reason: str) -> None:
    """A command whose intent no longer holds at delivery (its profile moved on) is never sent.

    The device is reconciled at once, so what it should have instead is queued for its next check-in.
    """
    commands.cancel_command(session, command.device_id, command.id, reason)
    desired_state.devices_changed(session, device_ids=[command.device_id])


def record_result(session: Session, device_id: str, command_id: str, result: CommandResult, now: datetime) -> Command:
    """The device's answer to one of its commands; the same answer twice changes nothing."""
    return commands.record_result(session, device_id, command_id, result, now)
