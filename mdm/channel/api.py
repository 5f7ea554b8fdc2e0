"""The device channel's endpoints. No bearer token: every request is signed by the device's own key."""

import time
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status

from mdm.actor import Actor
from mdm.channel import service
from mdm.channel.models import CheckinRequest, CheckinResponse
from mdm.channel.service import SignedRequest
from mdm.commands import service as commands
from mdm.commands.models import CommandResult
from mdm.database import Database
from mdm.dependencies import AppSealer, AppSettings, RequireRoles, WriteSession, get_database
from mdm.errors import Invalid
from mdm.ids import utcnow

router = APIRouter(prefix="/api/v1/devices", tags=["device channel"])


def signed_path(request: Request) -> str:
    """The PATH a device signs: as it went on the wire, percent-encoding and query string included.

    Every device-signed route must use this one: a route that left the query out would accept a
    signed request with any query an attacker adds.
    """
    path = (request.scope.get("raw_path") or request.url.path.encode()).decode("latin-1")
    query = request.scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


class DeviceSignature:
    """The device channel's credential check; the route walk test recognises routes by this dependency."""

    async def __call__(self, request: Request, device_id: str) -> SignedRequest:
        body = await request.body()
        headers = {key.lower(): value for key, value in request.headers.items()}
        return service.parse_signed_request(device_id, request.method, signed_path(request), headers, body, time.time())


Signed = Annotated[SignedRequest, Depends(DeviceSignature())]


class DeviceOrRoles(RequireRoles):
    """For what a device and staff may both fetch: a device's signature, or a token with one of the roles.

    A device may only ask about itself: the path's device_id is the one whose key must have signed.
    """

    def __call__(self, request: Request, database: Annotated[Database, Depends(get_database)]) -> Actor:
        if "x-mdm-signature" not in request.headers:
            return super().__call__(request, database)
        device_id = request.path_params["device_id"]
        headers = {key.lower(): value for key, value in request.headers.items()}
        signed = service.parse_signed_request(
            device_id, request.method, signed_path(request), headers, b"", time.time()
        )
        with database.writing() as session:
            service.authenticate(session, signed, utcnow())
        return Actor(kind="device", id=device_id, name=device_id)


def _parse(model: type[CheckinRequest] | type[CommandResult], body: bytes) -> CheckinRequest | CommandResult:
    from pydantic import ValidationError

    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        raise Invalid("The request body is invalid; see errors for each field.", errors) from exc


@router.post("/{device_id}/checkin", response_model=CheckinResponse)
def checkin(
    device_id: str, signed: Signed, session: WriteSession, settings: AppSettings, sealer: AppSealer
) -> CheckinResponse:
    """The device reports its inventory and receives the commands due (signed by the device)."""
    now = utcnow()
    device = service.authenticate(session, signed, now)
    body = _parse(CheckinRequest, signed.body)
    assert isinstance(body, CheckinRequest)
    redelivery = timedelta(seconds=settings.command_redelivery_seconds)
    return service.checkin(session, device, body.inventory, now, redelivery, settings.checkin_interval_seconds, sealer)


@router.post("/{device_id}/commands/{command_id}/result", status_code=status.HTTP_204_NO_CONTENT)
def command_result(device_id: str, command_id: str, signed: Signed, session: WriteSession) -> Response:
    """The device's answer to one of its commands (signed by the device). Sending it again changes nothing."""
    now = utcnow()
    service.authenticate(session, signed, now)
    result = _parse(CommandResult, signed.body)
    assert isinstance(result, CommandResult)
    commands.record_result(session, device_id, command_id, result, now)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
