"""The agent channel's endpoints. No bearer token: every request is signed by the device's own key."""

from fastapi import APIRouter, Response, status
from starlette.concurrency import run_in_threadpool

from mdm.channel import service as channel
from mdm.channel.agent import auth
from mdm.channel.agent.checkin import parse, serve_checkin
from mdm.channel.agent.dependencies import Signed
from mdm.channel.agent.models import CheckinResponse
from mdm.commands.models import CommandResult
from mdm.dependencies import AppDatabase, AppSettings, WriteSession
from mdm.ids import utcnow

router = APIRouter(prefix="/api/v1/devices", tags=["device channel"])


@router.post("/{device_id}/checkin", response_model=CheckinResponse)
async def checkin(device_id: str, signed: Signed, database: AppDatabase, settings: AppSettings) -> Response:
    """The device reports its inventory and receives the commands due (signed by the device)."""
    # One trip to the thread pool for the whole check-in: a session per dependency would cost one each.
    answer = await run_in_threadpool(serve_checkin, database, signed, settings)
    return Response(answer.model_dump_json(), media_type="application/json")


@router.post("/{device_id}/commands/{command_id}/result", status_code=status.HTTP_204_NO_CONTENT)
def command_result(device_id: str, command_id: str, signed: Signed, session: WriteSession) -> Response:
    """The device's answer to one of its commands (signed by the device). Sending it again changes nothing."""
    now = utcnow()
    auth.authenticate(session, signed, now)
    channel.record_result(session, device_id, command_id, parse(CommandResult, signed.body), now)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
