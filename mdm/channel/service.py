"""The device channel's protocol-neutral core: the few things every protocol adapter asks of the service.

An adapter proves who is talking in its own way (the agent's request signature, Apple's CMS signature)
and hands the core the certificate that made the proof. The core decides whether that identity may
talk (authorisation), stores what the device reported (whole, or one piece at a time as Apple answers),
hands over the commands due as intents for the adapter to render, and records the answers. The shape of
NanoMDM's service interface: the HTTP and the wire format stay in the adapter.

A revoked or expired certificate, or a device no longer managed, is 403 on every protocol alike.
"""

from datetime import datetime, timedelta

from sqlmodel import Session

from mdm import desired_state
from mdm.actor import Actor
from mdm.audit.service import record
from mdm.commands import service as commands
from mdm.commands.intents import Intent, intent_of
from mdm.commands.models import Command, CommandResult
from mdm.devices import service as devices
from mdm.devices.models import Device, DeviceCertificate, DeviceState
from mdm.errors import ProblemError
from mdm.inventory.models import Inventory
from mdm.inventory.service import store_inventory

REFUSED_STATES = {DeviceState.retired.value: "retired", DeviceState.in_stock.value: "wiped and back in stock"}


def identity_candidates(session: Session, device_id: str) -> list[DeviceCertificate]:
    """The certificates the device may prove itself with, newest first ([] for an unknown device)."""
    return devices.identity_candidates(session, device_id)


def admit(
    session: Session, device_id: str, proven: DeviceCertificate, candidates: list[DeviceCertificate], now: datetime
) -> Device:
    """The device, locked for the rest of the transaction, once the identity that proved it may still talk.

    `proven` is the candidate whose key made the adapter's signature. When it is the newest and an older
    identity is still live, the device has proven its re-enrolment: only now is the old one revoked.
    """
    device = devices.lock_for_update(session, device_id)
    if proven.revoked_at is not None:
        raise ProblemError(403, "This device's certificate has been revoked; enrol it again to manage it.")
    if proven.not_after <= now:
        raise ProblemError(403, "This device's certificate has expired; enrol it again.")
    if device.state in REFUSED_STATES:
        raise ProblemError(403, f"This device is {REFUSED_STATES[device.state]}; it is no longer managed.")
    if proven is candidates[0] and any(c.revoked_at is None for c in candidates[1:]):
        _supersede_older_identities(session, device, proven)
    return device


def _supersede_older_identities(session: Session, device: Device, proven: DeviceCertificate) -> None:
    serials = devices.revoke_certificates(
        session, device.id, "superseded: the device enrolled again", keep=proven.serial_number
    )
    actor = Actor(kind="device", id=device.id, name=device.id)
    summary = {"certificate": proven.serial_number, "revoked_certificates": serials}
    record(session, actor, "device.identity_confirmed", "device", device.id, summary)


def report_inventory(
    session: Session, device: Device, inventory: Inventory, now: datetime, *, partial: bool = False
) -> None:
    """Stores what the device reported and reconciles it when that changed; it counts as a check-in.

    `partial`: the report carries only some facts (Apple answers one query at a time); the rest stay.
    """
    if store_inventory(session, device.id, inventory, now, partial=partial):
        desired_state.devices_changed(session, device_ids=[device.id])
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
