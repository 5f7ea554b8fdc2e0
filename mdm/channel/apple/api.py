"""Apple's check-in and command endpoints (PUT /mdm/checkin, PUT /mdm/connect): read a plist, answer one.

No bearer token: every message is signed by the device's identity (dependencies.py). Refusals are 4xx,
never 5xx: a device retries a 5xx for ever, while a 4xx ends its attempt and shows in its log. Their
bodies are problem+json, which devices ignore and people reading a proxy's log can read.
"""

import plistlib
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Response, status
from starlette.concurrency import run_in_threadpool

from mdm.channel.apple import service
from mdm.channel.apple.dependencies import Signed
from mdm.channel.apple.messages import (
    Authenticate,
    CheckOut,
    MessageError,
    Report,
    TokenUpdate,
    read_checkin,
    read_report,
)
from mdm.channel.apple.signature import Signer
from mdm.database import Database
from mdm.dependencies import AppDatabase, AppSettings, WriteSession
from mdm.errors import ProblemError
from mdm.ids import utcnow

router = APIRouter(prefix="/mdm", tags=["Apple devices"])

USER_CHANNEL = "The user channel is not supported: this service manages devices, not their users' sessions."


def _bad(exc: MessageError) -> ProblemError:
    return ProblemError(400, exc.detail)


@router.put("/checkin", status_code=status.HTTP_200_OK, response_class=Response)
def checkin(signed: Signed, session: WriteSession) -> Response:
    """Authenticate, TokenUpdate and CheckOut (application/x-apple-aspen-mdm-checkin plists)."""
    try:
        message = read_checkin(signed.body)
    except MessageError as exc:
        raise _bad(exc) from exc
    if message.user_id is not None or message.message_type == "UserAuthenticate":
        # Apple: a server without user channels answers 410, and the device stops asking.
        raise ProblemError(410, USER_CHANNEL)
    now = utcnow()
    if isinstance(message, Authenticate):
        service.on_authenticate(session, signed.signer, message)
    elif isinstance(message, TokenUpdate):
        service.on_token_update(session, signed.signer, message, now)
    elif isinstance(message, CheckOut):
        service.on_check_out(session, signed.signer, message, now)
    else:
        raise ProblemError(400, f"MessageType {message.message_type} is not supported by this service.")
    return Response(status_code=status.HTTP_200_OK)


@router.put("/connect", status_code=status.HTTP_200_OK, response_class=Response)
async def connect(signed: Signed, database: AppDatabase, settings: AppSettings) -> Response:
    """The device's answer to its last command (or Idle); the answer is its next command, or an empty body."""
    try:
        report = read_report(signed.body)
    except MessageError as exc:
        raise _bad(exc) from exc
    if report.user_id is not None:
        raise ProblemError(410, USER_CHANNEL)
    redelivery = timedelta(seconds=settings.command_redelivery_seconds)
    # One trip to the thread pool for the whole connect, as for the agent's check-in.
    command = await run_in_threadpool(_answer, database, signed.signer, report, redelivery)
    if command is None:
        return Response(status_code=status.HTTP_200_OK)
    body = plistlib.dumps(command, fmt=plistlib.FMT_XML, sort_keys=True)
    return Response(body, media_type="application/xml; charset=UTF-8")


def _answer(database: Database, signer: Signer, report: Report, redelivery: timedelta) -> Any:
    if report.status == "Idle":
        return service.on_idle(database, signer, report, utcnow(), redelivery)
    with database.writing() as session:
        return service.on_report(session, signer, report, utcnow(), redelivery)
