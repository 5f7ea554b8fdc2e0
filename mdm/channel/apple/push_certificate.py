"""The school's APNs push certificate: loading, renewing, its expiry, and the CSR that starts it all.

Apple issues an MDM push certificate only to a request signed by an MDM vendor Apple knows; the school
takes that signed request to Apple's push certificates portal and gets back a certificate whose UID
names the topic (`com.apple.mgmt.External.<uuid>`). Every enrolled device is told that topic in its
enrolment profile and listens to it alone, so the topic is the one thing a renewal must keep: a new
certificate of the same topic replaces the old one and every device goes on hearing pushes; another
topic would silence every device enrolled so far, so it is refused unless the operator insists.

The private key is sealed at rest (mdm/sealing.py) like every other secret the service reads back.
The certificate lives in the database, not in a file, so every replica uses a new one at once.
"""

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pydantic import BaseModel
from sqlalchemy import func
from sqlmodel import Session, col, select

from mdm.actor import Actor
from mdm.audit.service import record
from mdm.channel.apple.models import AppleDevice, ApplePushCertificate
from mdm.devices.models import MANAGED_STATES, Device
from mdm.errors import Conflict, ProblemError
from mdm.ids import utcnow
from mdm.private_files import PRIVATE_FILE
from mdm.sealing import Sealer

CERTIFICATE_ID = 1
TOPIC_PREFIX = "com.apple.mgmt."
EXPIRY_WARNING = timedelta(days=30)
CSR_KEY_BITS = 2048


class PushCertificatePublic(BaseModel):
    """`GET /api/v1/apple/push-certificate`: what an administrator needs to renew in time."""

    topic: str
    not_after: datetime
    days_left: int
    loaded_at: datetime
    loaded_by: str
    warning: str | None = None


@dataclass(frozen=True)
class PushCertificateFiles:
    """A certificate and key that passed every check, ready to be stored."""

    topic: str
    not_after: datetime
    certificate_pem: str
    key_pem: str


@dataclass(frozen=True)
class LoadOutcome:
    topic: str
    not_after: datetime
    previous_topic: str | None
    devices_cut_off: int


@dataclass(frozen=True)
class SenderCertificate:
    """What the push sender needs; `fingerprint` tells it when to build a new TLS client."""

    topic: str
    certificate_pem: str
    key_sealed: str
    not_after: datetime

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.certificate_pem.encode()).hexdigest()


# --- Reading what Apple's portal gave the school -----------------------------------------------------


def read_files(certificate: bytes, key: bytes, now: datetime) -> PushCertificateFiles:
    """Checks a push certificate (PEM or DER) and its key (PEM); 422 saying what is wrong otherwise."""
    parsed = _certificate(certificate)
    private_key = _private_key(key)
    if _spki(private_key.public_key()) != _spki(parsed.public_key()):
        raise _unusable(
            "The key does not belong to this certificate: use the key the certificate request (CSR) was made "
            "with (`mdm apple push-csr --key ...`)."
        )
    if parsed.not_valid_after_utc <= now:
        raise _unusable(
            f"The certificate expired on {parsed.not_valid_after_utc:%Y-%m-%d}: renew it on Apple's push "
            "certificates portal (https://identity.apple.com) and load the new one."
        )
    if parsed.not_valid_before_utc > now:
        raise _unusable(f"The certificate is not valid before {parsed.not_valid_before_utc:%Y-%m-%d %H:%M} UTC.")
    return PushCertificateFiles(
        topic=_topic(parsed),
        not_after=parsed.not_valid_after_utc,
        certificate_pem=parsed.public_bytes(serialization.Encoding.PEM).decode(),
        key_pem=private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    )


def _unusable(detail: str) -> ProblemError:
    return ProblemError(422, detail, title="Unusable push certificate")


def _certificate(data: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError:
        raise _unusable("The certificate file is not an X.509 certificate (PEM or DER).") from None


def _private_key(data: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise _unusable(
            "The key is encrypted: decrypt it first (`openssl pkey -in push.key -out push-plain.key`); "
            "the service seals it with its own key."
        ) from None
    except ValueError:
        raise _unusable("The key file is not a PEM private key.") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise _unusable("APNs push certificates use RSA keys; this key is not one.")
    return key


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _topic(certificate: x509.Certificate) -> str:
    uids = certificate.subject.get_attributes_for_oid(NameOID.USER_ID)
    topic = str(uids[0].value) if uids else ""
    if not topic.startswith(TOPIC_PREFIX):
        raise _unusable(
            "This is not an APNs MDM push certificate: its subject has no UID of the form "
            f"{TOPIC_PREFIX}External.<uuid> (found {topic or 'none'!r}). Download the MDM certificate from "
            "Apple's push certificates portal (https://identity.apple.com)."
        )
    return topic


# --- Storing it --------------------------------------------------------------------------------------


def load(
    session: Session, files: PushCertificateFiles, sealer: Sealer, actor: Actor, *, new_topic: bool = False
) -> LoadOutcome:
    """Stores the certificate (id 1), replacing any before it; another topic only with `new_topic`."""
    current = session.get(ApplePushCertificate, CERTIFICATE_ID, with_for_update=True)
    previous_topic = current.topic if current else None
    cut_off = 0
    if previous_topic is not None and previous_topic != files.topic:
        cut_off = devices_not_listening_to(session, files.topic)
        if not new_topic:
            raise Conflict(
                f"This certificate's topic is {files.topic}, but the loaded one's is {previous_topic}. Devices "
                f"listen only to the topic they enrolled with: the {cut_off} Apple device(s) enrolled so far would "
                "never hear a push again and would have to enrol again. To renew, use Apple's portal's Renew "
                "on the existing certificate (same Apple ID), which keeps the topic. To switch topic anyway, "
                "load it again with --new-topic.",
                topic=files.topic,
                current_topic=previous_topic,
                devices_cut_off=cut_off,
            )
    row = current or ApplePushCertificate(id=CERTIFICATE_ID, topic="", certificate_pem="", key_sealed="")
    row.topic, row.certificate_pem, row.not_after = files.topic, files.certificate_pem, files.not_after
    row.key_sealed = sealer.seal(files.key_pem)
    row.loaded_at, row.loaded_by = utcnow(), actor.label
    session.add(row)
    action = "apple.push_certificate.load" if previous_topic is None else "apple.push_certificate.renew"
    if previous_topic not in (None, files.topic):
        action = "apple.push_certificate.new_topic"
    summary = {"topic": files.topic, "not_after": files.not_after, "previous_topic": previous_topic}
    record(
        session, actor, action, "apple_push_certificate", str(CERTIFICATE_ID), summary | {"devices_cut_off": cut_off}
    )
    return LoadOutcome(files.topic, files.not_after, previous_topic, cut_off)


def devices_not_listening_to(session: Session, topic: str) -> int:
    """Managed Apple devices that enrolled under another topic (or have not said which yet)."""
    statement = (
        select(func.count())
        .select_from(AppleDevice)
        .join(Device, col(Device.id) == col(AppleDevice.device_id))
        .where(
            col(Device.state).in_(MANAGED_STATES),
            col(AppleDevice.checked_out_at).is_(None),
            func.coalesce(AppleDevice.topic, "") != topic,
        )
    )
    return session.exec(statement).one()


# --- Reading it back ---------------------------------------------------------------------------------


def sender_certificate(session: Session) -> SenderCertificate | None:
    row = session.get(ApplePushCertificate, CERTIFICATE_ID)
    if row is None:
        return None
    return SenderCertificate(row.topic, row.certificate_pem, row.key_sealed, row.not_after)


def status(session: Session, now: datetime) -> PushCertificatePublic | None:
    row = session.get(ApplePushCertificate, CERTIFICATE_ID)
    if row is None:
        return None
    return PushCertificatePublic(
        topic=row.topic,
        not_after=row.not_after,
        days_left=days_left(row.not_after, now),
        loaded_at=row.loaded_at,
        loaded_by=row.loaded_by,
        warning=expiry_warning(row.not_after, now),
    )


def require_status(session: Session, now: datetime) -> PushCertificatePublic:
    found = status(session, now)
    if found is None:
        raise ProblemError(
            404,
            "No push certificate is loaded: Apple devices cannot be woken. Load one with "
            "`mdm apple push-cert load --cert push.pem --key push.key`.",
        )
    return found


def days_left(not_after: datetime, now: datetime) -> int:
    return (not_after - now) // timedelta(days=1)


def expiry_warning(not_after: datetime, now: datetime) -> str | None:
    """What to tell an administrator when the certificate expires within 30 days (or has expired)."""
    if not_after <= now:
        return (
            f"The APNs push certificate expired on {not_after:%Y-%m-%d}: no Apple device can be woken. Renew it "
            "on Apple's push certificates portal (same Apple ID, same topic) and load it with "
            "`mdm apple push-cert load`."
        )
    if not_after - now > EXPIRY_WARNING:
        return None
    return (
        f"The APNs push certificate expires on {not_after:%Y-%m-%d} ({days_left(not_after, now)} day(s) left): renew "
        "it on Apple's push certificates portal (same Apple ID, same topic) and load it with "
        "`mdm apple push-cert load`."
    )


# --- The request that starts it ----------------------------------------------------------------------


def push_csr(key_path: Path, common_name: str, email: str | None = None) -> tuple[bytes, bool]:
    """A CSR for the push certificate, signed with the key at `key_path` (made, 0600, when absent).

    Returns the PEM CSR and whether the key was made now.
    """
    created = not key_path.exists()
    if created:
        _write_new_key(key_path)
    key = _private_key(key_path.read_bytes())
    names = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if email:
        names.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    request = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names)).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM), created


def _write_new_key(path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=CSR_KEY_BITS)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)  # never readable by others
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
