"""ASGI middleware: request ids, access logs, the failed-authentication limit, the request-body ceiling
and NUL-free addresses.

Written as plain ASGI so the body limit applies while the body streams in, before any handler runs.
"""

import logging
import re
import time
from collections.abc import Iterable
from typing import Any

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mdm.auth.service import hash_token
from mdm.errors import ProblemError, problem_response
from mdm.ids import new_id
from mdm.logging import printable, request_id_var
from mdm.ratelimit import AbuseLimits, client_address

log = logging.getLogger("mdm.access")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,128}$")
# The request state key that `mdm.dependencies.authenticate` sets once a bearer token held.
AUTHENTICATED = "authenticated"


class RequestContextMiddleware:
    """Gives every request an id (kept from X-Request-ID when sane), echoes it, and logs one line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _SAFE_REQUEST_ID.match(incoming) else new_id()
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Caught here rather than by Starlette so the log line keeps the request id and the
            # client gets problem+json with no trace.
            log.exception("unhandled error in %s %s", *_request_line(scope))
            if not response_started:
                response = problem_response(
                    500, "Something went wrong on the server. It has been logged with this request's id."
                )
                await response(scope, receive, send_with_id)
        finally:
            log.info(
                "%s %s %s",
                *_request_line(scope),
                status,
                extra={"status": status, "duration_ms": round((time.perf_counter() - started) * 1000, 1)},
            )
            request_id_var.reset(token)


class FailedAuthLimitMiddleware:
    """429 for an address or a bearer token that failed authentication too often; counts each refusal.

    It runs before the body is read or the database is asked, so a refused flood costs a dict lookup.
    A refusal is a 401 whose challenge names the scheme the request used (Bearer, MDM-Signature);
    a request that offers no credential is not counted: it guesses nothing.
    """

    def __init__(self, app: ASGIApp, limits: AbuseLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        offered = _offered_credential(scope) if scope["type"] == "http" and self.limits.enabled else None
        if offered is None:
            await self.app(scope, receive, send)
            return
        channel, credential = offered
        address = client_address(scope)
        try:
            self.limits.check_auth(address, channel, credential)
        except ProblemError as exc:
            await problem_response(exc.status, exc.detail, headers=exc.headers, **exc.extra)(scope, receive, send)
            return
        refused = False

        async def watch(message: Message) -> None:
            nonlocal refused
            if message["type"] == "http.response.start" and message["status"] == 401:
                challenge = dict(message.get("headers", [])).get(b"www-authenticate", b"")
                refused = challenge.decode("latin-1").lower().startswith(channel)
            await send(message)

        await self.app(scope, receive, watch)
        if refused:
            self.limits.auth_failed(address, channel, credential)
        elif credential is not None and scope.get("state", {}).get(AUTHENTICATED):
            self.limits.auth_succeeded(credential)


def _offered_credential(scope: Scope) -> tuple[str, str | None] | None:
    """(channel, credential key) of what the request offers: a device signature or a bearer token.

    A device is counted by address alone: its id is no secret, so counting refusals per device would
    let anyone who knows an id shut that device out.
    """
    if _header(scope, b"x-mdm-signature") is not None:
        return "mdm-signature", None
    scheme, _, secret = (_header(scope, b"authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return None
    return "bearer", hash_token(secret.strip())


class BodyLimitMiddleware:
    """Refuses bodies over the limit with 413, whether announced by Content-Length or streamed.

    An ordinary request's body is read (up to `max_bytes`) before any handler runs. The import routes
    alone may take up to `max_import_bytes`, and for them nothing is read here: their handlers
    authenticate first and then pull the body through a counting `receive`, so a caller without a
    token of a role that may import never gets a byte past the headers into memory.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, max_import_bytes: int, import_routes: Iterable[re.Pattern[str]] = ()
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_import_bytes = max_import_bytes
        self.import_routes = tuple(import_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_import = scope["method"] == "POST" and any(route.match(scope["path"]) for route in self.import_routes)
        limit = self.max_import_bytes if is_import else self.max_bytes
        declared = _header(scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        if is_import:
            await self.app(scope, _counting(receive, limit), send)
            return
        body, complete = await _read_up_to(receive, limit)
        if not complete:
            await _too_large(limit)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


def import_routes(routes: Iterable[BaseRoute]) -> list[re.Pattern[str]]:
    """The app's real CSV import routes (POST .../import), which read their own body after authentication."""
    return [
        route.path_regex
        for route in routes
        if isinstance(route, APIRoute) and route.path.endswith("/import") and "POST" in route.methods
    ]


def _counting(receive: Receive, limit: int) -> Receive:
    size = 0

    async def counted() -> Message:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            # Raised inside the handler's read, so the error handlers answer it as problem+json.
            raise ProblemError(413, _too_large_detail(limit), max_bytes=limit)
        return message

    return counted


class NulInAddressMiddleware:
    """Refuses a path or query string holding a NUL (%00) with 400, before any route reads it.

    Path and query parameters reach database queries in many places, and PostgreSQL cannot take a
    NUL in text; one check here covers every route, present and future.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")):
            response = problem_response(400, "The address contains a NUL character (%00), which nothing here accepts.")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _read_up_to(receive: Receive, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _too_large(limit: int) -> Any:
    return problem_response(413, _too_large_detail(limit), max_bytes=limit)


def _too_large_detail(limit: int) -> str:
    return f"The request body is larger than this service accepts ({limit:,} bytes)."


def _request_line(scope: Scope) -> tuple[str, str]:
    """Method and path escaped at the source, so no log handler ever sees a raw CR or LF from a client."""
    return printable(scope["method"]), printable(scope["path"])


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None
