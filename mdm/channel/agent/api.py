"""The agent channel's endpoints. No bearer token: every request is signed by the device's own key."""

from datetime import timedelta
from typing import TypeVar

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ValidationError

from mdm.channel import service as channel
from mdm.channel.agent import auth
from mdm.channel.agent.dependencies import Signed
from mdm.channel.agent.models import CheckinRequest, CheckinResponse
from mdm.channel.agent.render import rendered
from mdm.commands.models import CommandResult
from mdm.dependencies import AppSettings, WriteSession
from mdm.errors import Invalid
from mdm.ids import utcnow

router = APIRouter(prefix="/api/v1/devices", tags=["device channel"])
Body = TypeVar("Body", bound=BaseModel)


def _parse(model: type[Body], body: bytes) -> Body:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        raise Invalid("The request body is invalid; see errors for each field.", errors) from exc


@router.post("/{device_id}/checkin", response_model=CheckinResponse)
def checkin(device_id: str, signed: Signed, session: WriteSession, settings: AppSettings) -> CheckinResponse:
    """The device reports its inventory and receives the commands due (signed by the device)."""
    now = utcnow()
    device = auth.authenticate(session, signed, now)
    body = _parse(CheckinRequest, signed.body)
    channel.report_inventory(session, device, body.inventory, now)
    due = channel.next_commands(session, device.id, now, timedelta(seconds=settings.command_redelivery_seconds))
    return CheckinResponse(commands=rendered(session, due), next_checkin_seconds=settings.checkin_interval_seconds)


@router.post("/{device_id}/commands/{command_id}/result", status_code=status.HTTP_204_NO_CONTENT)
def command_result(device_id: str, command_id: str, signed: Signed, session: WriteSession) -> Response:
    """The device's answer to one of its commands (signed by the device). Sending it again changes nothing."""
    now = utcnow()
    auth.authenticate(session, signed, now)
    channel.record_result(session, device_id, command_id, _parse(CommandResult, signed.body), now)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
