"""The agent's check-in, read first and written last: most check-ins hold the write lock for two statements.

A converged device reports the inventory it reported last time and has nothing waiting. Everything
that can refuse or decide a check-in is done before the write transaction: the identity is read and
the signature verified (401), admission is checked (403) and the body validated (422), all without a
write lock, so a forged or refused request never queues behind writers. The write transaction then
records a quiet check-in with one conditional UPDATE and uses up the nonce. Anything else,
or a quiet check-in that something changed under, takes the full path in the same transaction.
"""

import hashlib
from datetime import datetime, timedelta
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from sqlmodel import Session

from mdm.channel import service as channel
from mdm.channel.agent import auth
from mdm.channel.agent.auth import SignedRequest
from mdm.channel.agent.models import CheckinRequest, CheckinResponse
from mdm.channel.agent.render import rendered
from mdm.database import Database
from mdm.devices.models import Identity
from mdm.errors import Invalid
from mdm.ids import utcnow
from mdm.inventory.models import Inventory
from mdm.inventory.service import whole_report_hash
from mdm.settings import Settings

Body = TypeVar("Body", bound=BaseModel)


def parse(model: type[Body], body: bytes) -> Body:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        raise Invalid("The request body is invalid; see errors for each field.", errors) from exc


_UNSEEN = object()


class ReportHashes:
    """What a check-in body's inventory hashes to, remembered by the digest of the body's bytes.

    A converged device sends the same bytes at every check-in, and validating its 60 apps only to hash
    them again was a quarter of an unchanged check-in's CPU. The hash is a function of the bytes alone,
    so remembering it cannot change an answer: a body never seen is validated (422) and hashed as before.
    Bounded (about 250 bytes an entry) and forgotten all at once when full; a dict's get and set are
    atomic, so the server's threads share it without a lock.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._hashes: dict[bytes, str | None] = {}

    def read(self, body: bytes) -> tuple[Inventory | None, str | None]:
        """(the inventory, when it had to be validated, else None; its whole-report hash, as whole_report_hash)."""
        digest = hashlib.sha256(body).digest()
        known = self._hashes.get(digest, _UNSEEN)  # one lookup: another thread may clear between two
        if known is not _UNSEEN:
            return None, known  # type: ignore[return-value]
        report = self.parse(body)
        if len(self._hashes) >= self._capacity:
            self._hashes.clear()
        self._hashes[digest] = report_hash = whole_report_hash(report)
        return report, report_hash

    @staticmethod
    def parse(body: bytes) -> Inventory:
        return parse(CheckinRequest, body).inventory


_REPORTS = ReportHashes(capacity=32_768)  # a fleet's worth of converged devices: about 8 MB


def serve_checkin(database: Database, signed: SignedRequest, settings: Settings) -> CheckinResponse:
    """The device's check-in: its report stored, and the commands due handed over."""
    now = utcnow()
    with database.querying() as connection:
        candidates, seen = channel.read_device(connection, signed.device_id)
    proven = auth.signing_certificate(candidates, signed)
    if seen is not None:  # None: deleted since; the full path says so
        channel.refuse_unless_admissible(proven, seen.state, now)
    report, report_hash = _REPORTS.read(signed.body)
    quiet = seen is not None and report_hash == seen.inventory_hash and seen.is_quiet(proven, candidates)
    if report is None and not quiet:
        report = _REPORTS.parse(signed.body)  # a body seen before, but a change to store: parsed before the lock
    with database.committing() as connection:
        # The device's row first, then the nonce (whose foreign key also touches that row): every
        # check-in of one device takes its locks in the same order, so two never wait on each other.
        if quiet and channel.pass_quietly(connection, signed.device_id, proven, seen, now, report_hash=report_hash):
            auth.use_nonce(connection, signed, now)
            return CheckinResponse(commands=[], next_checkin_seconds=settings.checkin_interval_seconds)
        # Something moved since the read: the full path, with the body parsed only now if it was known.
        report = report if report is not None else _REPORTS.parse(signed.body)
        with database.session_on(connection) as session:
            return _full_checkin(session, signed, proven, report, report_hash, now, settings)


def _full_checkin(
    session: Session,
    signed: SignedRequest,
    proven: Identity,
    report: Inventory,
    report_hash: str | None,
    now: datetime,
    settings: Settings,
) -> CheckinResponse:
    """Admission under the device's row lock, the report stored and reconciled, the due commands marked sent."""
    candidates = channel.identity_candidates(session, signed.device_id)
    current = next((c for c in candidates if c.serial_number == proven.serial_number), None)
    if current is None:  # the identity went between the read and the lock
        raise auth.unauthenticated("Unknown device, or a signature that does not verify.")
    device = channel.admit(session, signed.device_id, current, candidates, now)
    auth.use_nonce(session, signed, now)
    channel.report_inventory(session, device, report, now, report_hash=report_hash)
    redelivery = timedelta(seconds=settings.command_redelivery_seconds)
    due = channel.next_commands(session, device.id, now, redelivery)
    return CheckinResponse(commands=rendered(session, due), next_checkin_seconds=settings.checkin_interval_seconds)
