"""Authenticating device requests and serving check-ins.

Authentication is the device's signature with the key behind its latest certificate (who it is);
authorisation is that certificate being live and the device not retired (whether it may talk to us).
A bad signature is 401; a revoked or expired certificate or a retired device is 403.
"""

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from sqlalchemy import delete
from sqlmodel import Session

from mdm import desired_state
from mdm.actor import Actor
from mdm.audit.service import record
from mdm.channel.models import CheckinResponse, DeviceNonce
from mdm.commands import service as commands
from mdm.commands.models import Command, DeviceCommandForDevice
from mdm.database import insert_ignoring_duplicates
from mdm.device_signature import SignatureError, check_nonce_format, check_timestamp, verify_request_signature
from mdm.devices import service as devices
from mdm.devices.models import Device, DeviceCertificate, DeviceState
from mdm.errors import ProblemError
from mdm.inventory.models import Inventory
from mdm.inventory.service import store_inventory
from mdm.sealing import Sealer

MAX_SKEW_SECONDS = 300
# Nonces are kept for twice the skew window: any request older than that is refused by its timestamp.
NONCE_RETENTION = timedelta(seconds=2 * MAX_SKEW_SECONDS)
SIGNED_HEADERS = {"X-MDM-Timestamp": "timestamp", "X-MDM-Nonce": "nonce", "X-MDM-Signature": "signature"}
REFUSED_STATES = {DeviceState.retired.value: "retired", DeviceState.in_stock.value: "wiped and back in stock"}


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
    """The device, locked for the rest of the transaction, once its signature, certificate and nonce hold."""
    device = session.get(Device, request.device_id)
    candidates = devices.identity_candidates(session, request.device_id) if device else []
    certificate = _signing_certificate(candidates, request)
    device = devices.lock_for_update(session, request.device_id)
    if certificate.revoked_at is not None:
        raise ProblemError(403, "This device's certificate has been revoked; enrol it again to manage it.")
    if certificate.not_after <= now:
        raise ProblemError(403, "This device's certificate has expired; enrol it again.")
    if device.state in REFUSED_STATES:
        raise ProblemError(403, f"This device is {REFUSED_STATES[device.state]}; it is no longer managed.")
    _use_nonce(session, request, now)
    if certificate is candidates[0] and any(c.revoked_at is None for c in candidates[1:]):
        _supersede_older_identities(session, device, certificate)
    return device


def _signing_certificate(candidates: list[DeviceCertificate], request: SignedRequest) -> DeviceCertificate:
    """The newest candidate whose key made the signature; 401 when none did."""
    if not candidates:
        raise unauthenticated("Unknown device, or a signature that does not verify.")
    detail = ""
    for certificate in candidates:
        public_key = x509.load_pem_x509_certificate(certificate.certificate_pem.encode()).public_key()
        try:
            verify_request_signature(
                public_key,
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


def _supersede_older_identities(session: Session, device: Device, proven: DeviceCertificate) -> None:
    """A re-enrolled device has signed with its new key: only now is its old identity revoked."""
    serials = devices.revoke_certificates(
        session, device.id, "superseded: the device enrolled again", keep=proven.serial_number
    )
    actor = Actor(kind="device", id=device.id, name=device.id)
    summary = {"certificate": proven.serial_number, "revoked_certificates": serials}
    record(session, actor, "device.identity_confirmed", "device", device.id, summary)


def _use_nonce(session: Session, request: SignedRequest, now: datetime) -> None:
    session.execute(
        delete(DeviceNonce).where(
            DeviceNonce.device_id == request.device_id,  # type: ignore[arg-type]
            DeviceNonce.seen_at < now - NONCE_RETENTION,  # type: ignore[arg-type,operator]
        )
    )
    fresh = insert_ignoring_duplicates(
        session, DeviceNonce, {"device_id": request.device_id, "nonce": request.nonce, "seen_at": now}
    )
    if not fresh:
        raise unauthenticated("This nonce was used before: the request is a replay.")


def checkin(
    session: Session,
    device: Device,
    inventory: Inventory,
    now: datetime,
    redelivery: timedelta,
    interval: int,
    sealer: Sealer,
) -> CheckinResponse:
    """Stores the inventory, reconciles the device if it changed, and hands over the commands due."""
    if store_inventory(session, device.id, inventory, now):
        desired_state.devices_changed(session, device_ids=[device.id])
    devices.mark_checked_in(session, device, inventory.os_version, now)
    due = commands.deliver_due(session, device.id, now, redelivery)
    return CheckinResponse(commands=[_as_delivered(c, sealer) for c in due], next_checkin_seconds=interval)


def _as_delivered(command: Command, sealer: Sealer) -> DeviceCommandForDevice:
    # A payload with a secret (a Wi-Fi password) is kept sealed and opened only for its device.
    payload = json.loads(sealer.open(command.sealed_payload)) if command.sealed_payload else command.payload
    return DeviceCommandForDevice(id=command.id, type=command.type, payload=payload)  # type: ignore[arg-type]
