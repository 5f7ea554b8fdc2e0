"""The SCEP server's route (RFC 8894): `GET|POST /scep?operation=...`, the URL of the enrolment profile's SCEP payload.

Refusals a SCEP client can be told about are CertRep FAILURE messages (200, as the RFC has it); what
cannot be answered in SCEP (an unknown operation, garbage) is a 400 whose problem+json says why in
plain words, like every other refusal of the service. The body limit is the API's (the middleware).
"""

import base64
import binascii
import logging
from collections.abc import Callable
from typing import Any

from cryptography import x509
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from enrollment import scep, service
from enrollment.ca import CertificateAuthority, ScepKeys
from mdm.database import Database
from mdm.errors import ProblemError, problem_documented
from mdm.ratelimit import AbuseLimits, client_address
from mdm.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(tags=["enrolment"])

_PLAIN = "text/plain"
_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "GetCACaps: capabilities, one a line. GetCACert: the certificates to encrypt to. "
        "PKIOperation: a CertRep (SUCCESS with the certificate, or FAILURE with its failInfo).",
        "content": {
            "text/plain": {},
            scep.CA_CERT_MEDIA_TYPE: {},
            scep.CA_RA_CERT_MEDIA_TYPE: {},
            scep.PKI_MESSAGE_MEDIA_TYPE: {},
        },
    },
    400: problem_documented("An unknown operation, or a message that is not SCEP."),
}


@router.get("/scep", response_class=Response, responses=_ANSWERS)
async def scep_get(request: Request, operation: str = "", message: str | None = None) -> Response:
    """SCEP for Apple devices: the challenge is an enrolment token, the identity comes from the school CA."""
    return await _answer(request, operation, _from_query(message) if operation == "PKIOperation" else None)


@router.post("/scep", response_class=Response, responses=_ANSWERS)
async def scep_post(request: Request, operation: str = "") -> Response:
    """SCEP's PKIOperation with the PKIMessage as the body (the POSTPKIOperation capability)."""
    return await _answer(request, operation, await request.body() if operation == "PKIOperation" else None)


async def _answer(request: Request, operation: str, message: bytes | None) -> Response:
    keys: Callable[[], ScepKeys] = request.app.state.scep_keys
    if operation == "GetCACaps":
        return Response("\n".join(scep.CAPABILITIES) + "\n", media_type=_PLAIN)
    if operation == "GetCACert":
        body, media_type = scep.ca_certificates(await run_in_threadpool(keys))
        return Response(body, media_type=media_type)
    if operation != "PKIOperation":
        raise _refused(f"Unknown SCEP operation {operation[:40]!r}: use GetCACaps, GetCACert or PKIOperation.")
    if message is None:
        raise _refused("PKIOperation by GET needs message=, the base64 of the DER PKIMessage.")
    return await run_in_threadpool(_pki_operation, request, message)


def _from_query(message: str | None) -> bytes | None:
    if not message:
        return None
    # A '+' that the client forgot to percent-encode arrives as a space.
    try:
        return base64.b64decode(message.replace(" ", "+"), validate=True)
    except (binascii.Error, ValueError):
        return None


def _pki_operation(request: Request, der: bytes) -> Response:
    state = request.app.state
    try:
        message = scep.read_message(der)
    except scep.Malformed as exc:
        raise _refused(str(exc)) from exc
    keys: ScepKeys = state.scep_keys()
    try:
        opened = scep.open_request(message, keys)
        issued = _issue(request, opened)
        body = scep.success(message, opened, keys, issued)
    except scep.ScepFailure as exc:
        log.info("SCEP request %s refused (failInfo %s): %s", message.transaction_id, exc.fail_info.name, exc.detail)
        body = scep.failure(message, keys, exc.fail_info)
    return Response(body, media_type=scep.PKI_MESSAGE_MEDIA_TYPE)


def _issue(request: Request, opened: scep.CertificateRequest) -> x509.Certificate:
    state = request.app.state
    limits: AbuseLimits = state.abuse_limits
    database: Database = state.database
    ca: CertificateAuthority = state.ca
    settings: Settings = state.settings
    # Guessing challenges is guessing enrolment tokens: the same limits as POST /api/v1/enroll. Over a
    # limit, the 429 (with Retry-After) is an HTTP answer, not a FAILURE, so the client tries again later.
    with limits.enrolment(client_address(request.scope), opened.challenge or ""), database.writing() as session:
        issued = service.issue_apple_identity(session, opened, ca, settings.device_certificate_days)
    return x509.load_pem_x509_certificate(issued.pem.encode("ascii"))


def _refused(reason: str) -> ProblemError:
    return ProblemError(400, reason)
