"""The command queue, after NanoMDM's: a command is a row before it is ever delivered.

Delivery is at least once: a command sent but not answered within the redelivery window goes out
again at the next check-in. Answers are idempotent by command id. Check-ins of one device are
serialised by the caller (a row lock on the device), so two never take the same command at once.
"""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, insert
from sqlmodel import Session, col, select

from mdm.actor import Actor
from mdm.audit.service import record
from mdm.backoff import doubling
from mdm.categories import PERSONAL, Category
from mdm.commands import intents
from mdm.commands.intents import Intent
from mdm.commands.models import (
    OPEN_STATUSES,
    Command,
    CommandPublic,
    CommandResult,
    CommandStatus,
    CommandType,
    TechnicianCommand,
)
from mdm.database import one_of
from mdm.devices import service as devices
from mdm.devices.models import MANAGED_STATES, Device
from mdm.errors import Conflict, Invalid, NotFound
from mdm.hooks import ResultListener, hooks_of
from mdm.ids import new_id, utcnow
from mdm.pagination import Page, PageParams, paginate

MAX_COMMANDS_PER_CHECKIN = 50
NOT_NOW_FIRST_RETRY = timedelta(minutes=1)
NOT_NOW_LONGEST_WAIT = timedelta(hours=6)


def queue_command(
    session: Session,
    device_id: str,
    intent: Intent,
    created_by: str,
    *,
    target: str | None = None,
    intent_key: str | None = None,
    expires_at: datetime | None = None,
) -> Command:
    """Records the command before it is ever delivered; its adapter renders the intent at delivery."""
    command = Command(
        id=new_id(),
        device_id=device_id,
        type=intent.command_type().value,
        payload=intent.payload(),
        target=target,
        intent=intent_key,
        status=CommandStatus.queued.value,
        created_at=utcnow(),
        created_by=created_by,
        expires_at=expires_at,
    )
    session.add(command)
    session.flush()
    return command


def queue_for_devices(
    session: Session,
    device_ids: list[str],
    intent: Intent,
    created_by: str,
    *,
    target: str | None = None,
    intent_key: str | None = None,
) -> int:
    """The same command for many devices, in one INSERT (a job working through a page of devices)."""
    now, payload = utcnow(), intent.payload()
    rows = [
        {
            "id": new_id(),
            "device_id": device_id,
            "type": intent.command_type().value,
            "payload": payload,
            "target": target,
            "intent": intent_key,
            "status": CommandStatus.queued.value,
            "created_at": now,
            "created_by": created_by,
            "deliveries": 0,
            "not_now_count": 0,
        }
        for device_id in device_ids
    ]
    if rows:
        session.execute(insert(Command), rows)
    return len(rows)


def open_commands(session: Session, device_id: str, command_type: CommandType | None = None) -> list[Command]:
    statement = select(Command).where(Command.device_id == device_id, col(Command.status).in_(OPEN_STATUSES))
    if command_type is not None:
        statement = statement.where(Command.type == command_type.value)
    return list(session.exec(statement.order_by(Command.id)))


def deliver_due(
    session: Session, device_id: str, now: datetime, redelivery_after: timedelta, limit: int = MAX_COMMANDS_PER_CHECKIN
) -> list[Command]:
    """Marks up to `limit` due commands sent and returns them, oldest first; expired ones are closed.

    One read of the device's open commands serves both: a converged device, the common case, has none,
    so its check-in costs that single indexed read here and no write.
    """
    waiting = list(session.exec(_OPEN_FOR_DEVICE, params={"device_id": device_id}))  # type: ignore[call-overload]
    expired = [c for c in waiting if c.expires_at is not None and c.expires_at <= now]
    for command in expired:
        command.status, command.answered_at = CommandStatus.expired.value, now
        command.result_detail = "expired before the device ran it"
    due = [c for c in waiting if c not in expired and _is_due(c, now, redelivery_after)][:limit]
    for command in due:
        command.status, command.sent_at, command.deliveries = CommandStatus.sent.value, now, command.deliveries + 1
    session.add_all(expired + due)
    return due


# Built once: the check-in path runs it for every device, every time.
_OPEN_FOR_DEVICE = (
    select(Command)
    .where(Command.device_id == bindparam("device_id"), one_of(Command.status, OPEN_STATUSES))
    .order_by(Command.id)
)


def _is_due(command: Command, now: datetime, redelivery_after: timedelta) -> bool:
    if command.status == CommandStatus.sent.value:  # delivered and not answered: again after the window
        return command.sent_at is None or command.sent_at <= now - redelivery_after
    return command.not_before is None or command.not_before <= now


def _device_command(session: Session, device_id: str, command_id: str) -> Command:
    command = session.exec(select(Command).where(Command.id == command_id).with_for_update()).first()
    # Another device's command is reported as unknown: a device may not learn what others are sent.
    if command is None or command.device_id != device_id:
        raise NotFound("command for this device", command_id)
    return command


def record_result(session: Session, device_id: str, command_id: str, result: CommandResult, now: datetime) -> Command:
    """Stores a device's answer; the same answer twice, or any answer to a finished command, changes nothing."""
    listeners = hooks_of(session).result_listeners  # first: a session without hooks is refused on every path
    command = _device_command(session, device_id, command_id)
    if command.status not in (CommandStatus.sent.value, CommandStatus.not_now.value):
        if command.status == CommandStatus.queued.value:
            raise Conflict("This command has not been delivered to the device yet.")
        if _answered_after_calling_off(command, result):
            return _record_late_answer(session, command, result, now, listeners)
        return command
    if result.status == "not_now":
        command.not_now_count += 1
        command.status = CommandStatus.not_now.value
        command.not_before = now + not_now_backoff(command.not_now_count)
    else:
        command.status = result.status
        command.answered_at = now
    command.result_detail = result.detail
    return _store_answer(session, command, listeners)


def _store_answer(session: Session, command: Command, listeners: tuple[ResultListener, ...]) -> Command:
    """Saves the answer, then lets the domains react in the same transaction (licences, exit steps)."""
    session.add(command)
    session.flush()
    for listener in listeners:
        listener(session, command)
    return command


def _answered_after_calling_off(command: Command, result: CommandResult) -> bool:
    """A command cancelled or expired after it reached the device may have run all the same."""
    called_off = command.status in (CommandStatus.cancelled.value, CommandStatus.expired.value)
    return called_off and command.sent_at is not None and result.status != "not_now"


def _record_late_answer(
    session: Session, command: Command, result: CommandResult, now: datetime, listeners: tuple[ResultListener, ...]
) -> Command:
    """What the device did is what the record says: an erase that ran after a hold is never dropped."""
    called_off = command.status
    command.status, command.answered_at = result.status, now
    command.result_detail = f"answered after it was {called_off}" + (f": {result.detail}" if result.detail else "")
    actor = Actor(kind="device", id=command.device_id, name=command.device_id)
    summary = {"command_id": command.id, "type": command.type, "was": called_off, "status": result.status}
    record(session, actor, "command.answered_late", "device", command.device_id, summary)
    return _store_answer(session, command, listeners)


def not_now_backoff(times: int) -> timedelta:
    """1, 2, 4, 8 ... minutes, up to six hours: a busy device is asked again, never hammered."""
    return doubling(NOT_NOW_FIRST_RETRY, NOT_NOW_LONGEST_WAIT, times)


def cancel_command(session: Session, device_id: str, command_id: str, reason: str) -> Command:
    command = _device_command(session, device_id, command_id)
    if command.status not in OPEN_STATUSES:
        raise Conflict(f"This command is already {command.status}; only waiting commands can be cancelled.")
    command.status = CommandStatus.cancelled.value
    command.answered_at = utcnow()
    command.result_detail = reason
    session.add(command)
    session.flush()
    return command


def cancel_open(session: Session, device_id: str, command_type: CommandType, reason: str) -> list[str]:
    ids = [c.id for c in open_commands(session, device_id, command_type)]
    for command_id in ids:
        cancel_command(session, device_id, command_id, reason)
    return ids


def cancel_all_open(session: Session, device_id: str, reason: str) -> list[str]:
    """A device that let go of management runs nothing more: whatever still waits is called off."""
    waiting = open_commands(session, device_id)
    for command in waiting:
        command.status, command.answered_at, command.result_detail = CommandStatus.cancelled.value, utcnow(), reason
        session.add(command)
    return [command.id for command in waiting]


def history_query(device_id: str) -> Select[Any]:
    return select(Command).where(Command.device_id == device_id)


def list_history(
    session: Session, device_id: str, page: PageParams, status: CommandStatus | None = None
) -> Page[CommandPublic]:
    """Every command recorded for the device, oldest first."""
    devices.require_device(session, device_id)
    statement = history_query(device_id)
    if status is not None:
        statement = statement.where(Command.status == status.value)
    return paginate(
        session,
        statement,
        Command.id,
        page,
        lambda rows: [CommandPublic.model_validate(c, from_attributes=True) for c in rows],
    )


# --- Staff actions ---------------------------------------------------------------------------------


def send_technician_command(session: Session, device_id: str, data: TechnicianCommand, actor: Actor) -> Command:
    device = devices.lock_for_update(session, device_id)
    if device.state not in MANAGED_STATES:
        raise Conflict(f"This device is {device.state}: only enrolled devices receive commands.")
    if data.type == CommandType.EraseDevice.value:
        _check_erase_allowed(device, data.confirm)
    intent = (
        intents.DeviceLock(message=data.message) if data.type == CommandType.DeviceLock.value else intents.EraseDevice()
    )
    expires_at = utcnow() + timedelta(hours=data.expires_in_hours) if data.expires_in_hours else None
    command = queue_command(session, device.id, intent, actor.label, target="device", expires_at=expires_at)
    summary = {"command_id": command.id, **intent.payload()}
    record(session, actor, f"command.{data.type}", "device", device.id, summary)
    return command


def _check_erase_allowed(device: Device, confirmed: bool) -> None:
    if Category(device.category) in PERSONAL:
        raise Conflict(
            f"This is a personal device ({device.category}): the school never erases a family's device. "
            "To end its management, offboard it (its exit removes MDM and only the school's apps and profiles)."
        )
    if device.held:
        raise Conflict(
            f"This device is held ({device.held_reason}); it must not be erased while evidence may be on it. "
            "Release the hold first."
        )
    if not confirmed:
        raise Invalid(
            'Erasing wipes everything on the device. Send "confirm": true to go ahead.',
            [{"field": "confirm", "message": "must be true to erase"}],
        )


def cancel_by_staff(session: Session, device_id: str, command_id: str, actor: Actor) -> Command:
    command = cancel_command(session, device_id, command_id, f"cancelled by {actor.label}")
    record(session, actor, "command.cancel", "device", device_id, {"command_id": command_id, "type": command.type})
    return command


def cancel_erase_on_hold(session: Session, device_id: str, actor: Actor) -> list[str]:
    """A device put on hold must never be wiped: any erase still waiting is cancelled."""
    cancelled = cancel_open(session, device_id, CommandType.EraseDevice, "cancelled: the device is held")
    if cancelled:
        record(session, actor, "command.cancel", "device", device_id, {"command_ids": cancelled, "why": "held"})
    return cancelled
