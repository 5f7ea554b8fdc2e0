"""What each Apple message does, in NanoMDM's shape: one function per check-in message and one for answers.

Authenticate binds the identity SCEP issued (through the enrolment hook). Every other message is
checked like the agent's: the certificate that signed it must be one of its device's identities, the
device must be the one the message names (its UDID), and the core admits it (401 for a stranger's or
an unknown certificate, 403 for a revoked or expired one or a device no longer managed). The HTTP layer
(api.py) only reads bodies and writes answers.
"""

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from mdm.channel import service as channel
from mdm.channel.apple import queries
from mdm.channel.apple.dependencies import unauthenticated
from mdm.channel.apple.messages import Authenticate, CheckOut, MessageError, Report, TokenUpdate
from mdm.channel.apple.models import AppleDevice
from mdm.channel.apple.render import Unrenderable, command_plist
from mdm.channel.apple.signature import Signer
from mdm.commands import service as commands
from mdm.commands.intents import InstallApplication, QueryInventory, intent_of
from mdm.commands.models import OPEN_STATUSES, Command, CommandResult, CommandType
from mdm.database import Database, Queryable
from mdm.devices import service as devices
from mdm.devices.models import Device, DeviceState, Identity
from mdm.errors import Conflict, NotFound, ProblemError
from mdm.hooks import AppleClaim, hooks_of
from mdm.inventory.service import stored_apps

log = logging.getLogger("mdm.channel.apple")

RESULTS = {"Acknowledged": "acknowledged", "Error": "error", "CommandFormatError": "error", "NotNow": "not_now"}
QUERY_CREATOR = "apple-inventory"
APP_CHANGES = (CommandType.InstallApplication.value, CommandType.RemoveApplication.value)
# Bounds the commands withdrawn in one connect before one is sent (stale profiles, say).
MAX_WITHDRAWN_PER_CONNECT = 20


def query_target(query: str) -> str:
    return f"inventory:{query}"


# --- Who is talking ---------------------------------------------------------------------------------


def authenticate(session: Session, signer: Signer, udid: str, now: datetime) -> Device:
    """The device, locked for the transaction, once its certificate, its UDID and the core agree."""
    proven, candidates, _standing = identify(session, signer, udid)
    return channel.admit(session, proven.device_id, proven, candidates, now)


def identify(session: Queryable, signer: Signer, udid: str) -> tuple[Identity, list[Identity], channel.Standing | None]:
    """The identity that signed, its device's other candidates and standing; 401 unless it is that UDID's own."""
    certificate, candidates, seen = channel.read_device_of_certificate(session, signer.serial_hex)
    if certificate is None or certificate.fingerprint_sha256 != signer.fingerprint_sha256:
        raise unauthenticated("This certificate is no device's identity: the device must Authenticate first.")
    proven = next((c for c in candidates if c.serial_number == certificate.serial_number), None)
    if proven is None:
        raise unauthenticated("This identity was replaced by a newer one; sign with the newest.")
    if session.execute(_UDID, {"device_id": proven.device_id}).scalar() != udid:
        raise unauthenticated("This certificate belongs to another device.")
    return proven, candidates, seen


_UDID = select(col(AppleDevice.udid)).where(col(AppleDevice.device_id) == bindparam("device_id"))


# --- Check-in messages ----------------------------------------------------------------------------


def on_authenticate(session: Session, signer: Signer, message: Authenticate) -> str:
    claim = AppleClaim(
        udid=message.udid,
        serial=message.serial,
        model=message.model,
        product_name=message.product_name,
        os_version=message.os_version,
        build=message.build,
        device_name=message.device_name,
    )
    device_id = hooks_of(session).apple_enrolment.bind(session, signer.serial_hex, claim)
    apple = session.get(AppleDevice, device_id)
    if apple is None:
        other = session.exec(select(AppleDevice).where(AppleDevice.udid == message.udid)).first()
        if other is not None:
            raise Conflict("This UDID is another device's record; ask IT to look at both devices.")
        apple = AppleDevice(device_id=device_id, udid=message.udid)
    apple.topic = message.topic or apple.topic
    apple.checked_out_at = None
    session.add(apple)
    return device_id


def on_token_update(session: Session, signer: Signer, message: TokenUpdate, now: datetime) -> None:
    device = authenticate(session, signer, message.udid, now)
    apple = session.get(AppleDevice, device.id)
    assert apple is not None  # authenticate found it
    apple.topic = message.topic or apple.topic
    apple.push_token, apple.push_magic = message.token.hex(), message.push_magic
    apple.token_updated_at, apple.push_token_dead_at = now, None
    session.add(apple)
    if device.state == DeviceState.registered.value:
        hooks_of(session).apple_enrolment.complete(session, device.id)
        queue_inventory_queries(session, [device.id])
    channel.checked_in(session, device, now)


def on_check_out(session: Session, signer: Signer, message: CheckOut, now: datetime) -> None:
    """The MDM profile was removed. After the school's own RemoveMDM, that is its acknowledgement."""
    try:
        device = authenticate(session, signer, message.udid, now)
    except ProblemError as exc:
        if exc.status == 403 and _already_left(session, signer):
            return  # RemoveMDM was acknowledged first: the device has left, and says so once more
        raise
    apple = session.get(AppleDevice, device.id)
    assert apple is not None
    apple.checked_out_at = now
    session.add(apple)
    removal = [c for c in commands.open_commands(session, device.id, CommandType.RemoveMDM) if c.sent_at is not None]
    if removal:
        result = CommandResult(status="acknowledged", detail="the device checked out")
        channel.record_result(session, device.id, removal[-1].id, result, now)
        return
    hooks_of(session).apple_enrolment.check_out(session, device.id)


def _already_left(session: Session, signer: Signer) -> bool:
    certificate = devices.certificate_by_serial(session, signer.serial_hex)
    if certificate is None:
        return False
    device = devices.require_device(session, certificate.device_id)
    return device.state in channel.REFUSED_STATES


# --- The command endpoint --------------------------------------------------------------------------


def on_idle(database: Database, signer: Signer, report: Report, now: datetime, redelivery: timedelta) -> Any:
    """An Idle connect (a push answered, or the device's own poll): usually nothing waits for it.

    Read and checked before any write lock, then recorded with the core's one conditional UPDATE; when
    commands wait, or anything moved since the read, the full path runs in the same transaction.
    """
    with database.querying() as connection:
        proven, candidates, seen = identify(connection, signer, report.udid)
    if seen is not None:
        channel.refuse_unless_admissible(proven, seen.state, now)
    quiet = seen is not None and seen.is_quiet(proven, candidates)
    with database.committing() as connection:
        if quiet and channel.pass_quietly(connection, proven.device_id, proven, seen, now):  # type: ignore[arg-type]
            return None
        with database.session_on(connection) as session:
            return on_report(session, signer, report, now, redelivery)


def on_report(session: Session, signer: Signer, report: Report, now: datetime, redelivery: timedelta) -> Any:
    """Records the device's answer, then hands it its next command (None: nothing is due)."""
    device = authenticate(session, signer, report.udid, now)
    if report.status == "Idle" or not _recorded(session, device, report, now):
        channel.checked_in(session, device, now)
    return next_command(session, device.id, now, redelivery)


def _recorded(session: Session, device: Device, report: Report, now: datetime) -> bool:
    """Records the answer (and a query's data); False when it counted as no more than a check-in."""
    status = RESULTS[report.status]
    detail = report.error_text() if status == "error" else None
    try:
        command = channel.record_result(
            session, device.id, report.command_uuid or "", CommandResult(status=status, detail=detail), now
        )
    except (NotFound, Conflict) as exc:
        # A command this device was never sent (or one since purged): nothing to record, but no reason
        # to stop the device's session either; its next command is still due.
        log.info("apple device %s answered an unknown command %s: %s", device.id, report.command_uuid, exc)
        return False
    if status == "acknowledged" and command.type in APP_CHANGES:
        # The inventory must show the app managed (or gone) before the reconciler and an exit can rely on it.
        queue_inventory_queries(session, [device.id], only=(queries.INSTALLED_APPS, queries.MANAGED_APPS))
    if command.type != CommandType.QueryInventory.value or status != "acknowledged":
        return False
    return _merge_answer(session, device, command, report, now)


def _merge_answer(session: Session, device: Device, command: Command, report: Report, now: datetime) -> bool:
    intent = intent_of(command)
    assert isinstance(intent, QueryInventory)
    try:
        piece = queries.inventory_piece(intent.query, report.document, stored_apps(session, device.id))
    except (MessageError, ValueError) as exc:
        log.warning("apple device %s sent a %s answer that does not read: %s", device.id, intent.query, exc)
        return False
    channel.report_inventory(session, device, piece, now, partial=True)
    if intent.query == queries.DEVICE_INFORMATION:
        devices.note_reported_facts(session, device, queries.device_facts(report.document), now)
    return True


def next_command(session: Session, device_id: str, now: datetime, redelivery: timedelta) -> dict[str, Any] | None:
    """The oldest due command as Apple's plist dictionary; one that cannot be rendered is not sent."""
    for _ in range(MAX_WITHDRAWN_PER_CONNECT):
        due = channel.next_commands(session, device_id, now, redelivery, limit=1)
        if not due:
            return None
        command, intent = due[0]
        try:
            return command_plist(session, command, intent)
        except Unrenderable as exc:
            _not_sent(session, command, intent, exc.reason, now)
    return None


def _not_sent(session: Session, command: Command, intent: Any, reason: str, now: datetime) -> None:
    if isinstance(intent, InstallApplication):
        # Ends as an error the history shows, not withdrawn: withdrawing reconciles at once, and the
        # reconciler would queue the same install again in this very connect.
        channel.record_result(session, command.device_id, command.id, CommandResult(status="error", detail=reason), now)
    else:
        channel.withdraw(session, command, reason)


# --- Inventory queries ------------------------------------------------------------------------------


def queue_inventory_queries(session: Session, device_ids: list[str], only: tuple[str, ...] = queries.QUERIES) -> int:
    """Queues each inventory query (of `only`) a device has no open command for; returns how many were queued."""
    if not device_ids:
        return 0
    open_targets = set(
        session.exec(
            select(Command.device_id, Command.target).where(
                col(Command.device_id).in_(device_ids),
                Command.type == CommandType.QueryInventory.value,
                col(Command.status).in_(OPEN_STATUSES),
            )
        )
    )
    queued = 0
    for query in only:  # one INSERT per kind of query, whatever the number of devices
        asking = [d for d in device_ids if (d, query_target(query)) not in open_targets]
        queued += commands.queue_for_devices(
            session, asking, QueryInventory(query=query), QUERY_CREATOR, target=query_target(query), intent_key="query"
        )
    return queued
