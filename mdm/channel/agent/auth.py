"""Who is talking on the agent channel: the request signature, checked against the device's identities.

The headers are checked alone first (presence, clock skew, nonce shape) so a stale or malformed request
costs no database work. Then the newest identity whose key made the signature is handed to the core,
which decides whether it may still talk; last, the nonce is used up, so a replay inside the skew window
is refused too.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from cryptography import x509
from sqlmodel import Session

from mdm.channel import service as channel
from mdm.channel.agent.models import DeviceNonce
from mdm.channel.agent.signature import (
    MAX_SKEW_SECONDS,
    SignatureError,
    VerifyingKey,
    check_nonce_format,
    check_timestamp,
    verify_request_signature,
)
from mdm.database import Queryable, insert_ignoring_duplicates
from mdm.devices.models import Device, Identity
from mdm.errors import ProblemError

# Nonces are kept for twice the skew window: any request older than that is refused by its timestamp.
NONCE_RETENTION = timedelta(seconds=2 * MAX_SKEW_SECONDS)
SIGNED_HEADERS = ("X-MDM-Timestamp", "X-MDM-Nonce", "X-MDM-Signature")


@dataclass(frozen=True)
class SignedRequest:
    device_id: str
    method: str
    path: str
    timestamp: int
    nonce: str
    signature: str
    body: bytes


def unauthenticated(detail: str) -> ProblemError:
    return ProblemError(401, detail, headers={"WWW-Authenticate": 'MDM-Signature realm="devices"'})


def parse_signed_request(
    device_id: str, method: str, path: str, headers: dict[str, str], body: bytes, now: float
) -> SignedRequest:
    """Checks the headers alone (presence, clock skew, nonce shape) before any database work."""
    missing = [name for name in SIGNED_HEADERS if not headers.get(name.lower())]
    if missing:
        raise unauthenticated(f"This is the device channel: sign the request ({', '.join(missing)} missing).")
    try:
        timestamp = check_timestamp(headers["x-mdm-timestamp"], now, MAX_SKEW_SECONDS)
        nonce = check_nonce_format(headers["x-mdm-nonce"])
    except SignatureError as exc:
        raise unauthenticated(exc.detail) from exc
    return SignedRequest(device_id, method, path, timestamp, nonce, headers["x-mdm-signature"], body)


def authenticate(session: Session, request: SignedRequest, now: datetime) -> Device:
    """The device, locked for the rest of the transaction, once its signature, identity and nonce hold."""
    candidates = channel.identity_candidates(session, request.device_id)
    certificate = signing_certificate(candidates, request)
    device = channel.admit(session, request.device_id, certificate, candidates, now)
    use_nonce(session, request, now)
    return device


def signing_certificate(candidates: list[Identity], request: SignedRequest) -> Identity:
    """The newest candidate whose key made the signature; 401 when none did."""
    if not candidates:
        raise unauthenticated("Unknown device, or a signature that does not verify.")
    detail = ""
    for certificate in candidates:
        try:
            verify_request_signature(
                _public_key(certificate.certificate_pem),
                request.signature,
                request.method,
                request.path,
                request.timestamp,
                request.nonce,
                request.body,
            )
        except SignatureError as exc:
            detail = exc.detail
            continue
        return certificate
    raise unauthenticated(f"Unknown device, or a signature that does not verify: {detail}")


@lru_cache(maxsize=8192)
def _public_key(certificate_pem: str) -> VerifyingKey:
    """Parsing a certificate costs more than verifying a signature; a certificate's key never changes."""
    return x509.load_pem_x509_certificate(certificate_pem.encode()).public_key()  # type: ignore[return-value]


def use_nonce(executor: Queryable, request: SignedRequest, now: datetime) -> None:
    """401 when the nonce was seen before. Old nonces go in a scheduled purge (jobs.py), not on each request."""
    fresh = insert_ignoring_duplicates(
        executor, DeviceNonce, {"device_id": request.device_id, "nonce": request.nonce, "seen_at": now}
    )
    if not fresh:
        raise unauthenticated("This nonce was used before: the request is a replay.")
