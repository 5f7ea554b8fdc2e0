"""Which certificate made a message: Apple's `Mdm-Signature`, or a trusted proxy's `Client-Cert` header.

A device enrolled with `SignMessage` signs every body it sends: the header is a base64 detached CMS
SignedData (RFC 5652) over the exact body, by its SCEP identity, with the identity's certificate inside.
We check the signature (RSA PKCS#1 v1.5 over SHA-1 or SHA-2; over the signed attributes, whose
messageDigest must then be the body's hash, when the device sent them), and that the certificate was
issued by the school CA, whose key verifies its signature. Which device the certificate belongs to,
and whether it may still talk, is for the caller: this module only says who signed.

Behind a TLS-terminating proxy that checked the client certificate itself, RFC 9440's `Client-Cert`
header carries it instead; that header is believed only when the operator says the proxy is trusted
(MDM_TRUST_CLIENT_CERT_HEADER=1), since anyone can send it otherwise.
"""

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache

from asn1crypto import cms, core
from asn1crypto import x509 as x509_asn1
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mdm.channel.keys import weak_rsa_reason

SIGNATURE_HEADER = "Mdm-Signature"
CLIENT_CERT_HEADER = "Client-Cert"
# A CMS signature holding a device certificate is a few kilobytes; anything far larger is not one.
MAX_HEADER_CHARS = 32 * 1024

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class SignatureError(ValueError):
    """The message's proof of origin was refused; `detail` says why (always a 401)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class Signer:
    """The certificate that proved the message, checked as issued by the school CA."""

    certificate: x509.Certificate
    serial_hex: str  # as DeviceCertificate and AppleIdentity store it
    fingerprint_sha256: str


def signer_of(
    headers: dict[str, str], body: bytes, ca_certificate: x509.Certificate, *, trust_client_cert_header: bool
) -> Signer:
    """The school-issued certificate behind this message (headers' names lower-case); SignatureError if none."""
    signature = headers.get(SIGNATURE_HEADER.lower())
    client_cert = headers.get(CLIENT_CERT_HEADER.lower())
    if signature:
        return verify_mdm_signature(signature, body, ca_certificate)
    if client_cert and trust_client_cert_header:
        return _school_signer(_client_certificate(client_cert), ca_certificate)
    if client_cert:
        raise SignatureError(
            f"{CLIENT_CERT_HEADER} is only believed behind a trusted TLS proxy (MDM_TRUST_CLIENT_CERT_HEADER=1); "
            f"sign the message ({SIGNATURE_HEADER})."
        )
    raise SignatureError(f"The message is not signed: {SIGNATURE_HEADER} is missing (enrol with SignMessage).")


# A device sends the same certificate with every message, and what is checked of a certificate alone
# (it reads, the school CA issued it) never changes: checked once per process. Only the school's own
# certificates are remembered (a failed check is not), so strangers cannot fill the memory with theirs.
# Whether a certificate is revoked or expired is the core's question, asked of the database every time.
_CERTIFICATES_REMEMBERED = 8192


@lru_cache(maxsize=_CERTIFICATES_REMEMBERED)
def _school_signer(der: bytes, ca_certificate: x509.Certificate) -> Signer:
    certificate = _load_certificate(der)
    _require_issued_by(certificate, ca_certificate)
    return Signer(
        certificate=certificate,
        serial_hex=format(certificate.serial_number, "x"),
        fingerprint_sha256=certificate.fingerprint(hashes.SHA256()).hex(),
    )


class VerifiedSignatures:
    """Signatures verified lately, by a hash of everything the verdict depends on: header, body and CA.

    A device that signs without a signing time (macOS, and the iPads the benchmarks simulate) sends
    the very same header over the very same body at every idle connect, and RSA PKCS#1 v1.5 is
    deterministic. Verifying is a function of those bytes alone, so a remembered verdict is the same
    verdict, for half the CPU of an idle connect. Only successes are kept, the memory is bounded
    (cleared when full, so churning it costs only speed), and revocation is not part of it: the core
    reads it from the database for every message.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._signers: dict[tuple[bytes, x509.Certificate], Signer] = {}

    def verify(self, header: str, body: bytes, ca_certificate: x509.Certificate) -> Signer:
        # Base64 has no NUL, so header and body cannot be re-split into another pair of the same hash.
        key = (hashlib.sha256(header.encode() + b"\0" + body).digest(), ca_certificate)
        known = self._signers.get(key)
        if known is not None:
            return known
        signer = _verify_mdm_signature(header, body, ca_certificate)
        if len(self._signers) >= self._capacity:
            self._signers.clear()
        self._signers[key] = signer
        return signer


_VERIFIED = VerifiedSignatures(capacity=_CERTIFICATES_REMEMBERED)


def verify_mdm_signature(header: str, body: bytes, ca_certificate: x509.Certificate) -> Signer:
    """The school certificate whose key signed `body`, read from the detached CMS SignedData in the header."""
    return _VERIFIED.verify(header, body, ca_certificate)


def _verify_mdm_signature(header: str, body: bytes, ca_certificate: x509.Certificate) -> Signer:
    der = _base64(header, SIGNATURE_HEADER)
    try:
        return _verified_signer(_signed_data(der), body, ca_certificate)
    except SignatureError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        # asn1crypto parses lazily: a malformed part fails where it is first read, anywhere below.
        raise SignatureError(f"{SIGNATURE_HEADER} is not a CMS SignedData structure: {exc}") from exc


def _verified_signer(signed_data: cms.SignedData, body: bytes, ca_certificate: x509.Certificate) -> Signer:
    signer_infos = signed_data["signer_infos"]
    if len(signer_infos) != 1:
        raise SignatureError(f"{SIGNATURE_HEADER} must have exactly one signer, not {len(signer_infos)}.")
    signer_info = signer_infos[0]
    signer = _school_signer(_signer_certificate(signed_data, signer_info), ca_certificate)
    hash_name = signer_info["digest_algorithm"]["algorithm"].native
    if hash_name not in _HASHES:
        raise SignatureError(f"{SIGNATURE_HEADER} uses the digest {hash_name}; SHA-1 or SHA-2 is expected.")
    if signer_info["signature_algorithm"].signature_algo != "rsassa_pkcs1v15":
        raise SignatureError(f"{SIGNATURE_HEADER} must be an RSA PKCS#1 v1.5 signature.")
    signed_bytes = _signed_bytes(signer_info, body, hash_name)
    _verify(_rsa_key(signer.certificate), signer_info["signature"].native, signed_bytes, hash_name)
    return signer


def _base64(value: str, name: str) -> bytes:
    if len(value) > MAX_HEADER_CHARS:
        raise SignatureError(f"{name} is too long to be a device's.")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{name} is not valid base64.") from exc


def _signed_data(der: bytes) -> cms.SignedData:
    content_info = cms.ContentInfo.load(der, strict=True)
    if content_info["content_type"].native != "signed_data":
        raise SignatureError(f"{SIGNATURE_HEADER} is CMS, but not SignedData.")
    signed_data = content_info["content"]
    if signed_data["encap_content_info"]["content"].native is not None:
        raise SignatureError(f"{SIGNATURE_HEADER} must be a detached signature of the body.")
    return signed_data  # type: ignore[no-any-return]


def _signer_certificate(signed_data: cms.SignedData, signer_info: cms.SignerInfo) -> bytes:
    sid = signer_info["sid"]
    certificates = signed_data["certificates"]
    for choice in [] if isinstance(certificates, core.Void) else certificates:
        if choice.name != "certificate":
            continue
        candidate = choice.chosen
        if sid.name == "issuer_and_serial_number":
            wanted = sid.chosen
            matches = candidate.serial_number == wanted["serial_number"].native and _same_name(
                candidate.issuer, wanted["issuer"]
            )
        else:
            matches = candidate.key_identifier == sid.chosen.native
        if matches:
            return candidate.dump()  # type: ignore[no-any-return]
    raise SignatureError(f"{SIGNATURE_HEADER} does not carry the signer's certificate.")


def _same_name(one: x509_asn1.Name, other: x509_asn1.Name) -> bool:
    """The same bytes, the common case, settle it; only differently encoded names need X.520's comparison."""
    return one.dump() == other.dump() or one == other


def _signed_bytes(signer_info: cms.SignerInfo, body: bytes, hash_name: str) -> bytes:
    """What the signature covers: the body itself, or the signed attributes that hold its digest."""
    signed_attrs = signer_info["signed_attrs"]
    if isinstance(signed_attrs, core.Void) or len(signed_attrs) == 0:
        return body
    digests = [a["values"][0].native for a in signed_attrs if a["type"].native == "message_digest"]
    if len(digests) != 1:
        raise SignatureError(f"{SIGNATURE_HEADER}'s signed attributes must hold one messageDigest.")
    if not hmac.compare_digest(digests[0], hashlib.new(hash_name, body).digest()):
        raise SignatureError(f"{SIGNATURE_HEADER} was made over another body: the message was changed.")
    # The signature covers the attributes' DER as a SET OF, not the [0]-tagged form they travel in.
    der = signed_attrs.dump()
    return b"\x31" + der[1:]


def _rsa_key(certificate: x509.Certificate) -> rsa.RSAPublicKey:
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureError("The signing certificate's key is not RSA; Apple device identities are.")
    reason = weak_rsa_reason(key)
    if reason is not None:
        raise SignatureError(f"The device's {reason}.")
    return key


def _verify(key: rsa.RSAPublicKey, signature: bytes, data: bytes, hash_name: str) -> None:
    try:
        key.verify(signature, data, padding.PKCS1v15(), _HASHES[hash_name]())
    except InvalidSignature as exc:
        raise SignatureError(f"{SIGNATURE_HEADER} does not verify with the certificate it carries.") from exc


def _client_certificate(header: str) -> bytes:
    """RFC 9440: the DER certificate as a structured-field byte sequence, `:base64:`."""
    value = header.strip()
    if len(value) < 3 or not (value.startswith(":") and value.endswith(":")):
        raise SignatureError(f"{CLIENT_CERT_HEADER} must be a byte sequence (:base64 DER:), as RFC 9440 says.")
    return _base64(value[1:-1], CLIENT_CERT_HEADER)


def _load_certificate(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise SignatureError(f"The signing certificate does not read: {exc}") from exc


def _require_issued_by(certificate: x509.Certificate, ca_certificate: x509.Certificate) -> None:
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise SignatureError("The signing certificate was not issued by the school's certificate authority.") from exc
