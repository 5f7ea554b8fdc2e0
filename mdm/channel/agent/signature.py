"""The device channel's request signature, shared by the server and the reference agent.

A device proves each request with the key behind its enrolment certificate. Signing the method, path,
timestamp, nonce and a hash of the body means a captured request cannot be replayed later (timestamp),
replayed now (nonce), or bent to another endpoint or payload (path, body).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import secrets

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from mdm.channel.keys import weak_rsa_reason

TIMESTAMP_HEADER = "X-MDM-Timestamp"
NONCE_HEADER = "X-MDM-Nonce"
SIGNATURE_HEADER = "X-MDM-Signature"

MAX_SKEW_SECONDS = 300
_NONCE_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,64}")
# Plain ASCII digits only: int() would also take "+5", " 5", "1_000" and non-ASCII digits.
_TIMESTAMP_PATTERN = re.compile(r"[0-9]{1,12}")
# The largest RSA signature OpenSSL will verify (16384 bits) is 2 KiB, so 4 KiB of base64 is ample.
_MAX_SIGNATURE_CHARS = 4096

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
VerifyingKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class SignatureError(ValueError):
    """A device request's signature headers were refused; `detail` says which and why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def canonical_request(method: str, path_with_query: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    """The exact bytes both sides sign: METHOD, PATH, TIMESTAMP, NONCE, hex SHA-256 of the body."""
    for name, value in (("method", method), ("path", path_with_query), ("nonce", nonce)):
        if "\n" in value:
            # A newline inside a field would let one request's fields be read as another's.
            raise SignatureError(f"The request {name} must not contain a newline.")
    body_hash = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{path_with_query}\n{timestamp}\n{nonce}\n{body_hash}".encode()


def sign_request(private_key: SigningKey, method: str, path: str, timestamp: int, nonce: str, body: bytes) -> str:
    """Base64 signature for the X-MDM-Signature header (ECDSA P-256/SHA-256 or RSA PKCS#1 v1.5/SHA-256)."""
    message = canonical_request(method, path, timestamp, nonce, body)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        _require_p256(private_key.curve)
        signature = private_key.sign(message, ec.ECDSA(hashes.SHA256()))
    elif isinstance(private_key, rsa.RSAPrivateKey):
        _require_strong_rsa(private_key.public_key())
        signature = private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise SignatureError(_unsupported(private_key))
    return base64.b64encode(signature).decode("ascii")


def verify_request_signature(
    public_key: VerifyingKey,
    signature_b64: str,
    method: str,
    path: str,
    timestamp: int,
    nonce: str,
    body: bytes,
) -> None:
    """Raise SignatureError unless `signature_b64` is the device key's signature over this request."""
    signature = _decode_signature(signature_b64)
    message = canonical_request(method, path, timestamp, nonce, body)
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            _require_p256(public_key.curve)
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            _require_strong_rsa(public_key)
            public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise SignatureError(_unsupported(public_key))
    except InvalidSignature as exc:
        raise SignatureError(f"{SIGNATURE_HEADER} does not match this request for the device's enrolled key.") from exc


def check_timestamp(timestamp_header: str, now: float, max_skew: int = MAX_SKEW_SECONDS) -> int:
    """Parse X-MDM-Timestamp and refuse it when more than `max_skew` seconds from `now`."""
    if not _TIMESTAMP_PATTERN.fullmatch(timestamp_header or ""):
        raise SignatureError(f"{TIMESTAMP_HEADER} must be Unix time in whole seconds, e.g. 1718000000.")
    timestamp = int(timestamp_header)
    skew = timestamp - now
    if abs(skew) > max_skew:
        direction = "ahead of" if skew > 0 else "behind"
        seconds = math.ceil(abs(skew))
        raise SignatureError(
            f"{TIMESTAMP_HEADER} is {seconds} s {direction} the server's clock; at most {max_skew} s "
            "is allowed. Check the device's date and time."
        )
    return timestamp


def check_nonce_format(nonce: str) -> str:
    """Refuse a nonce that is not 16 to 64 characters of [A-Za-z0-9_-]."""
    if not _NONCE_PATTERN.fullmatch(nonce or ""):
        raise SignatureError(f"{NONCE_HEADER} must be 16 to 64 characters of A-Z, a-z, 0-9, '_' and '-'.")
    return nonce


def new_nonce() -> str:
    """A fresh nonce: 32 URL-safe characters carrying 192 random bits."""
    return secrets.token_urlsafe(24)


def _decode_signature(signature_b64: str) -> bytes:
    if not signature_b64 or len(signature_b64) > _MAX_SIGNATURE_CHARS:
        raise SignatureError(f"{SIGNATURE_HEADER} is missing or too long.")
    try:
        return base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{SIGNATURE_HEADER} is not valid base64.") from exc


def _require_strong_rsa(key: rsa.RSAPublicKey) -> None:
    reason = weak_rsa_reason(key)
    if reason is not None:
        raise SignatureError(f"The device's {reason}.")


def _require_p256(curve: ec.EllipticCurve) -> None:
    if not isinstance(curve, ec.SECP256R1):
        raise SignatureError(f"EC keys must be on P-256 for device signatures; this key is on {curve.name}.")


def _unsupported(key: object) -> str:
    return f"{type(key).__name__} keys cannot sign device requests; use EC P-256 or RSA."
