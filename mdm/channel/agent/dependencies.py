"""The agent channel's credential check as FastAPI dependencies: one way to read a signed request."""

import time
from typing import Annotated

from fastapi import Depends, Request

from mdm.actor import Actor
from mdm.channel.agent import auth
from mdm.channel.agent.auth import SignedRequest
from mdm.database import Database
from mdm.dependencies import RequireRoles, get_database
from mdm.ids import utcnow


def signed_path(request: Request) -> str:
    """The PATH a device signs: as it went on the wire, percent-encoding and query string included.

    Every device-signed route must use this one: a route that left the query out would accept a
    signed request with any query an attacker adds.
    """
    path = (request.scope.get("raw_path") or request.url.path.encode()).decode("latin-1")
    query = request.scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


def signed_request(request: Request, device_id: str, body: bytes) -> SignedRequest:
    """The request's signing headers, checked alone, with the exact body the device signed."""
    headers = {key.lower(): value for key, value in request.headers.items()}
    return auth.parse_signed_request(device_id, request.method, signed_path(request), headers, body, time.time())


class DeviceSignature:
    """The device channel's credential check; the route walk test recognises routes by this dependency."""

    async def __call__(self, request: Request, device_id: str) -> SignedRequest:
        return signed_request(request, device_id, await request.body())


Signed = Annotated[SignedRequest, Depends(DeviceSignature())]


class DeviceOrRoles(RequireRoles):
    """For what a device and staff may both fetch: a device's signature, or a token with one of the roles.

    A device may only ask about itself: the path's device_id is the one whose key must have signed. Only
    GET routes use it, so the body a device signed is empty.
    """

    def __call__(self, request: Request, database: Annotated[Database, Depends(get_database)]) -> Actor:
        if "x-mdm-signature" not in request.headers:
            return super().__call__(request, database)
        device_id = request.path_params["device_id"]
        signed = signed_request(request, device_id, b"")
        with database.writing() as session:
            auth.authenticate(session, signed, utcnow())
        return Actor(kind="device", id=device_id, name=device_id)
