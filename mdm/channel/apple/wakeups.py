"""Which Apple devices to wake, waking them, and what APNs' answers change.

Pushes are coalesced: every minute, one set-based query finds the Apple devices that have a command
due (what the queue would hand them if they connected now), a live push token, and no push within
the interval; each gets one push, however many commands wait. Devices are read in pages by id and
no transaction stays open while APNs is asked. A device's failure is counted and the others go on.
Pushes go one after another over one HTTP/2 connection: httpx's sync client, shared by threads, was
seen to open streams out of order (a protocol error APNs answers with GOAWAY); an async sender with
many streams in flight is the way to more than a few hundred pushes a second.

Also the daily check of the certificate's expiry, which warns subscribers 30 days ahead.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, exists, or_, update
from sqlmodel import Session, col, select

from mdm.actor import Actor
from mdm.audit.service import record
from mdm.channel.apple import push_certificate
from mdm.channel.apple.models import AppleDevice
from mdm.channel.apple.push import ApnsGateway, Outcome, PushResult, PushTarget
from mdm.channel.apple.push_certificate import SenderCertificate
from mdm.commands.models import Command, CommandStatus
from mdm.database import Database
from mdm.devices import service as devices
from mdm.devices.models import MANAGED_STATES, Device
from mdm.errors import Conflict, ProblemError
from mdm.ids import utcnow
from mdm.scheduler import JobContext, JobSpec
from mdm.settings import Settings
from mdm.webhooks.models import EventType
from mdm.webhooks.service import emit

log = logging.getLogger("mdm.apple.push")

PAGE_SIZE = 500


@dataclass
class PushRun:
    pushed: int = 0
    dead: int = 0
    waiting: int = 0  # throttled or the gateway backing off: their commands wait for the next run
    refused: int = 0
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"pushed {self.pushed}, dead tokens {self.dead}, waiting {self.waiting}, refused {self.refused}"
        return text + (f" ({'; '.join(sorted(set(self.reasons))[:5])})" if self.reasons else "")


# --- Which devices -----------------------------------------------------------------------------------


def due_targets(
    session: Session, topic: str, now: datetime, interval: timedelta, redelivery: timedelta, after: str, limit: int
) -> list[PushTarget]:
    """One page (by device id, after `after`) of Apple devices to wake now."""
    command_due = exists().where(
        col(Command.device_id) == col(AppleDevice.device_id),
        or_(
            and_(
                col(Command.status).in_((CommandStatus.queued.value, CommandStatus.not_now.value)),
                or_(col(Command.not_before).is_(None), col(Command.not_before) <= now),
            ),
            # delivered, never answered: the queue hands it out again, so the device needs waking again
            and_(col(Command.status) == CommandStatus.sent.value, col(Command.sent_at) <= now - redelivery),
        ),
        or_(col(Command.expires_at).is_(None), col(Command.expires_at) > now),
    )
    statement = (
        select(AppleDevice.device_id, AppleDevice.push_token, AppleDevice.push_magic)
        .join(Device, col(Device.id) == col(AppleDevice.device_id))
        .where(
            col(Device.state).in_(MANAGED_STATES),
            *live_token(topic),
            or_(col(AppleDevice.last_push_at).is_(None), col(AppleDevice.last_push_at) <= now - interval),
            col(AppleDevice.device_id) > after,
            command_due,
        )
        .order_by(col(AppleDevice.device_id))
        .limit(limit)
    )
    return [PushTarget(device_id, token, magic) for device_id, token, magic in session.exec(statement)]


def live_token(topic: str) -> tuple[object, ...]:
    """A device APNs can still reach on this topic: a token, its PushMagic, not dead, not checked out."""
    return (
        col(AppleDevice.push_token).is_not(None),
        col(AppleDevice.push_magic).is_not(None),
        col(AppleDevice.push_token_dead_at).is_(None),
        col(AppleDevice.checked_out_at).is_(None),
        col(AppleDevice.topic) == topic,
    )


# --- What APNs said ----------------------------------------------------------------------------------


def record_results(session: Session, results: list[tuple[PushTarget, PushResult]], now: datetime) -> None:
    """Accepted pushes start the device's interval; dead tokens stop pushes until the next TokenUpdate."""
    accepted = [target.device_id for target, result in results if result.outcome == Outcome.accepted]
    if accepted:
        session.execute(update(AppleDevice).where(col(AppleDevice.device_id).in_(accepted)).values(last_push_at=now))
    dead = [
        {"id": target.device_id, "token": target.token} for target, result in results if result.outcome == Outcome.gone
    ]
    if dead:
        # Only the token APNs refused: a TokenUpdate that arrived meanwhile brought a live one.
        session.connection().execute(
            update(AppleDevice)
            .where(col(AppleDevice.device_id) == bindparam("id"), col(AppleDevice.push_token) == bindparam("token"))
            .values(push_token_dead_at=now),
            dead,
        )


# --- The coalescing job ------------------------------------------------------------------------------


def push_due(
    database: Database,
    gateway: ApnsGateway,
    settings: Settings,
    still_running: Callable[[], None] = lambda: None,
) -> PushRun:
    """Wakes every Apple device with commands due and no push within the interval; returns the counts."""
    run = PushRun()
    with database.reading() as session:
        certificate = push_certificate.sender_certificate(session)
    if certificate is None:
        run.reasons.append("no push certificate is loaded")
        return run
    interval = timedelta(seconds=settings.apns_push_interval_seconds)
    redelivery = timedelta(seconds=settings.command_redelivery_seconds)
    after, now = "", utcnow()
    while True:
        with database.reading() as session:
            page = due_targets(session, certificate.topic, now, interval, redelivery, after, PAGE_SIZE)
        if not page:
            return run
        results = [(target, _push_one(gateway, certificate, target, run)) for target in page]
        with database.writing() as session:
            record_results(session, results, utcnow())
        after = page[-1].device_id
        log.info("APNs: %s so far", run.summary())
        still_running()


def _push_one(gateway: ApnsGateway, certificate: SenderCertificate, target: PushTarget, run: PushRun) -> PushResult:
    try:
        result = gateway.push(certificate, target)
    except Exception as exc:  # one device's surprise never stops the others; the log has the trace
        log.exception("push to device %s failed", target.device_id)
        result = PushResult(Outcome.refused, f"{type(exc).__name__}: {exc}")
    if result.outcome == Outcome.accepted:
        run.pushed += 1
    elif result.outcome == Outcome.gone:
        run.dead += 1
    elif result.outcome in (Outcome.throttled, Outcome.unreachable):
        run.waiting += 1
    else:
        run.refused += 1
    if result.outcome != Outcome.accepted and result.reason:
        run.reasons.append(result.reason)
    return result


# --- One device, now (POST /api/v1/devices/{id}/push) ------------------------------------------------


def wake_target(session: Session, device_id: str) -> tuple[SenderCertificate, PushTarget]:
    """What waking this device needs, or the refusal a technician can act on."""
    devices.require_device(session, device_id)
    apple = session.get(AppleDevice, device_id)
    if apple is None:
        raise Conflict("This device does not speak Apple's MDM protocol: it is never woken by APNs.")
    certificate = push_certificate.sender_certificate(session)
    if certificate is None:
        raise ProblemError(
            503, "No push certificate is loaded: load one with `mdm apple push-cert load` to wake Apple devices."
        )
    live = session.exec(
        select(AppleDevice.device_id).where(AppleDevice.device_id == device_id, *live_token(certificate.topic))
    )
    if live.first() is None or apple.push_token is None or apple.push_magic is None:
        raise Conflict(
            "This device has no live push token for the loaded certificate's topic (it has not sent a TokenUpdate, "
            "APNs said its token is dead, it checked out, or it enrolled under another topic); it is woken again "
            "after its next TokenUpdate."
        )
    return certificate, PushTarget(device_id, apple.push_token, apple.push_magic)


def wake(database: Database, gateway: ApnsGateway, device_id: str, actor: Actor) -> PushResult:
    """Pushes to one device now; 202-worthy only when APNs accepted it."""
    with database.reading() as session:
        certificate, target = wake_target(session, device_id)
    result = gateway.push(certificate, target)  # no transaction is open while APNs answers
    with database.writing() as session:
        record_results(session, [(target, result)], utcnow())
        record(
            session,
            actor,
            "device.push",
            "device",
            device_id,
            {"outcome": result.outcome.value, "reason": result.reason},
        )
    if result.outcome == Outcome.accepted:
        return result
    if result.outcome == Outcome.gone:
        raise Conflict(
            f"APNs says this device's push token is dead ({result.reason}); it is woken again after its next TokenUpdate."
        )
    headers = {"Retry-After": str(max(1, int(result.retry_after.total_seconds())))} if result.retry_after else None
    raise ProblemError(503, f"APNs did not take the push: {result.reason}.", headers=headers)


# --- The certificate's expiry ------------------------------------------------------------------------


def warn_of_expiry(database: Database) -> str:
    """Emits `apple.push_certificate_expiring` when the certificate expires within 30 days (or has)."""
    with database.writing() as session:
        current = push_certificate.status(session, utcnow())
        if current is None:
            return "no push certificate is loaded"
        if current.warning is None:
            return f"{current.days_left} day(s) left"
        emit(
            session,
            EventType.apple_push_certificate_expiring,
            {"topic": current.topic, "not_after": current.not_after, "days_left": current.days_left},
        )
        log.warning(current.warning)
        return current.warning


def jobs(gateway: ApnsGateway, settings: Settings) -> list[JobSpec]:
    def push(context: JobContext) -> str:
        return push_due(context.database, gateway, settings, context.still_running).summary()

    def expiry(context: JobContext) -> str:
        return warn_of_expiry(context.database)

    return [
        JobSpec(name="apple-push", cron="* * * * *", work=push),
        # Once a day at most: the slot is claimed by one replica.
        JobSpec(name="apple-push-certificate-expiry", cron="0 8 * * *", work=expiry),
    ]
