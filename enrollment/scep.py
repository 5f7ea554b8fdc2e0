"""SCEP (RFC 8894) on the wire: reading a client's PKIMessage and writing the CertRep that answers it.

Apple devices get their MDM identity from the enrolment profile's SCEP payload: the device makes an
RSA key, wraps a PKCS#10 request (with the profile's Challenge as challengePassword) in a CMS
EnvelopedData encrypted to our RSA certificate, and signs the lot with a self-signed certificate of
the same key. We answer with a SignedData whose content is the issued certificate, encrypted back to
that self-signed certificate. Everything a client sends is attacker-controlled, so each step either
yields a typed value or raises: `Malformed` when the message cannot even be answered in SCEP (HTTP
400), `ScepFailure` when it can (a CertRep FAILURE with the RFC's failInfo).

This module knows no database and no enrolment token: enrollment.service decides whether a challenge
and a CSR are acceptable. ASN.1 is asn1crypto's, cryptography does the cryptography.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes
from cryptography.x509.oid import AttributeOID

from enrollment.ca import ScepKeys
from mdm.errors import ProblemError

log = logging.getLogger(__name__)

# What GetCACaps advertises: everything here is implemented below. No Renewal, GetNextCACert or
# Update: a device whose identity nears its end is enrolled again by the MDM profile.
CAPABILITIES = ("POSTPKIOperation", "SHA-256", "SHA-512", "SHA-1", "AES", "DES3", "SCEPStandard")

CA_CERT_MEDIA_TYPE = "application/x-x509-ca-cert"
CA_RA_CERT_MEDIA_TYPE = "application/x-x509-ca-ra-cert"
PKI_MESSAGE_MEDIA_TYPE = "application/x-pki-message"

# RFC 8894 section 3.2.1: the SCEP authenticated attributes.
_MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
_PKI_STATUS = "2.16.840.1.113733.1.9.3"
_FAIL_INFO = "2.16.840.1.113733.1.9.4"
_SENDER_NONCE = "2.16.840.1.113733.1.9.5"
_RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
_TRANSACTION_ID = "2.16.840.1.113733.1.9.7"

_MAX_TRANSACTION_ID = 256
_NONCE_BYTES = 16

_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class MessageType(StrEnum):
    CERT_REP = "3"
    RENEWAL_REQ = "17"
    PKCS_REQ = "19"
    CERT_POLL = "20"
    GET_CERT = "21"
    GET_CRL = "22"


class PkiStatus(StrEnum):
    SUCCESS = "0"
    FAILURE = "2"


class FailInfo(StrEnum):
    BAD_ALG = "0"
    BAD_MESSAGE_CHECK = "1"
    BAD_REQUEST = "2"
    BAD_TIME = "3"
    BAD_CERT_ID = "4"


class Malformed(ValueError):
    """Not a SCEP message we could answer in SCEP: no SignedData, or no transaction to answer."""


class ScepFailure(ProblemError):
    """A refusal answered as a CertRep FAILURE; a ProblemError so the enrolment limits count it.

    `status` is what the same refusal is on `POST /api/v1/enroll`; SCEP clients see only `fail_info`.
    """

    def __init__(self, fail_info: FailInfo, reason: str, status: int = 400) -> None:
        super().__init__(status, reason)
        self.fail_info = fail_info


@dataclass(frozen=True)
class PkiMessage:
    """The signed envelope of a client's request: enough to answer it, even with a failure."""

    transaction_id: str
    message_type: str
    sender_nonce: bytes
    digest: str
    signer_info: cms.SignerInfo
    signed_data: cms.SignedData


@dataclass(frozen=True)
class CertificateRequest:
    """A PKCSReq whose signature checked out and whose envelope opened with our key."""

    csr_pem: bytes
    challenge: str | None
    requester: x509.Certificate
    content_algorithm: str


# --- GetCACert -----------------------------------------------------------------------------------


def ca_certificates(keys: ScepKeys) -> tuple[bytes, str]:
    """GetCACert's body and media type: the CA alone (DER), or the RA and the CA (degenerate PKCS#7)."""
    if not keys.is_ra:
        return keys.certificate.public_bytes(serialization.Encoding.DER), CA_CERT_MEDIA_TYPE
    return degenerate_pkcs7(list(keys.chain)), CA_RA_CERT_MEDIA_TYPE


def degenerate_pkcs7(certificates: list[x509.Certificate]) -> bytes:
    """A certificates-only SignedData: no content, no signers (RFC 8894 section 3.4)."""
    signed = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [],
            "encap_content_info": {"content_type": "data"},
            "certificates": [_asn1_certificate(certificate) for certificate in certificates],
            "signer_infos": [],
        }
    )
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


# --- Reading a PKIOperation ------------------------------------------------------------------------


def read_message(der: bytes) -> PkiMessage:
    """The request's SignedData and the attributes every answer needs; Malformed if it has none."""
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise Malformed("The message is not a CMS SignedData.")
        signed_data = info["content"]
        signer_infos = signed_data["signer_infos"]
        if len(signer_infos) != 1:
            raise Malformed("The message must have exactly one signer.")
        signer_info = signer_infos[0]
        attributes = _attributes(signer_info)
        transaction_id = _printable(attributes, _TRANSACTION_ID)
        message_type = _printable(attributes, _MESSAGE_TYPE)
        sender_nonce = _octets(attributes, _SENDER_NONCE)
        digest = signer_info["digest_algorithm"]["algorithm"].native
    except (ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, Malformed):
            raise
        raise Malformed("The message is not a SCEP PKIMessage (a DER CMS SignedData).") from exc
    if not transaction_id or len(transaction_id) > _MAX_TRANSACTION_ID or not sender_nonce:
        raise Malformed("The message has no usable transactionID or senderNonce.")
    return PkiMessage(transaction_id, message_type, sender_nonce, digest, signer_info, signed_data)


def open_request(message: PkiMessage, keys: ScepKeys) -> CertificateRequest:
    """Check the requester's signature, decrypt the envelope and read the CSR; ScepFailure otherwise."""
    if message.message_type == MessageType.CERT_POLL:
        # Nothing is ever left pending here, so there is no request this poll could be about.
        raise ScepFailure(FailInfo.BAD_CERT_ID, "No request is pending for this transaction.")
    if message.message_type != MessageType.PKCS_REQ:
        raise ScepFailure(FailInfo.BAD_REQUEST, f"Message type {message.message_type!r} is not supported here.")
    if message.digest not in _DIGESTS:
        raise ScepFailure(FailInfo.BAD_ALG, f"The digest algorithm {message.digest!r} is not supported.")
    requester = _requester_certificate(message)
    content = _verified_content(message, requester)
    envelope, content_algorithm = _decrypt(content, keys)
    csr = _read_csr(envelope)
    if _spki(csr.public_key()) != _spki(requester.public_key()):
        # RFC 8894 section 3.3.1: a PKCSReq is signed with a self-signed certificate of the key it asks for.
        raise ScepFailure(FailInfo.BAD_REQUEST, "The request is not signed by the key it asks a certificate for.")
    return CertificateRequest(
        csr_pem=csr.public_bytes(serialization.Encoding.PEM),
        challenge=_challenge(csr),
        requester=requester,
        content_algorithm=content_algorithm,
    )


def _attributes(signer_info: cms.SignerInfo) -> dict[str, Any]:
    signed = signer_info["signed_attrs"]
    if signed.native is None:
        raise Malformed("The message carries no authenticated attributes.")
    found: dict[str, Any] = {}
    for attribute in signed:
        values = attribute["values"]
        if len(values) == 1:
            found[attribute["type"].dotted] = values[0]
    return found


def _printable(attributes: dict[str, Any], oid: str) -> str:
    value = attributes.get(oid)
    if value is None:
        raise Malformed("The message lacks a required SCEP attribute.")
    return str(value.parse(core.PrintableString).native)


def _octets(attributes: dict[str, Any], oid: str) -> bytes:
    value = attributes.get(oid)
    if value is None:
        raise Malformed("The message lacks a required SCEP attribute.")
    return bytes(value.parse(core.OctetString).native)


def _requester_certificate(message: PkiMessage) -> x509.Certificate:
    sid = message.signer_info["sid"]
    for choice in message.signed_data["certificates"] or []:
        if choice.name != "certificate":
            continue
        candidate = choice.chosen
        if _identifies(sid, candidate):
            try:
                return x509.load_der_x509_certificate(candidate.dump())
            except ValueError as exc:
                raise ScepFailure(FailInfo.BAD_MESSAGE_CHECK, "The signer's certificate cannot be read.") from exc
    raise ScepFailure(FailInfo.BAD_MESSAGE_CHECK, "The message does not carry its signer's certificate.")


def _identifies(identifier: Any, certificate: asn1_x509.Certificate) -> bool:
    if identifier.name == "issuer_and_serial_number":
        chosen = identifier.chosen
        return bool(
            chosen["issuer"] == certificate.issuer and chosen["serial_number"].native == certificate.serial_number
        )
    return bool(identifier.chosen.native == certificate.key_identifier)


def _verified_content(message: PkiMessage, requester: x509.Certificate) -> bytes:
    signer_info = message.signer_info
    if signer_info["signature_algorithm"].signature_algo != "rsassa_pkcs1v15":
        raise ScepFailure(FailInfo.BAD_ALG, "Only RSA PKCS#1 v1.5 signatures are supported.")
    key = requester.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ScepFailure(FailInfo.BAD_ALG, "The requester's key must be RSA, to receive its certificate.")
    digest = _DIGESTS[message.digest]()
    # The signature covers the attributes DER-encoded as a SET, not with the [0] tag they travel under.
    signed_bytes = b"\x31" + signer_info["signed_attrs"].dump()[1:]
    try:
        key.verify(signer_info["signature"].native, signed_bytes, PKCS1v15(), digest)
    except InvalidSignature as exc:
        raise ScepFailure(FailInfo.BAD_MESSAGE_CHECK, "The message's signature does not verify.") from exc
    content = message.signed_data["encap_content_info"]["content"]
    data = bytes(content.native) if content.native is not None else b""
    expected = next(
        (a["values"][0].native for a in signer_info["signed_attrs"] if a["type"].native == "message_digest"), None
    )
    if expected is None or not secrets.compare_digest(_hash(message.digest, data), expected):
        raise ScepFailure(FailInfo.BAD_MESSAGE_CHECK, "The message's content does not match its signed digest.")
    return data


def _decrypt(content: bytes, keys: ScepKeys) -> tuple[bytes, str]:
    try:
        info = cms.ContentInfo.load(content, strict=True)
        if info["content_type"].native != "enveloped_data":
            raise ValueError("not EnvelopedData")
        enveloped = info["content"]
        recipient = _our_recipient(enveloped, keys.certificate)
        encrypted = enveloped["encrypted_content_info"]
        algorithm = encrypted["content_encryption_algorithm"]
        ciphertext = encrypted["encrypted_content"].native
    except (ValueError, TypeError, KeyError) as exc:
        raise ScepFailure(FailInfo.BAD_MESSAGE_CHECK, "The message's envelope cannot be read.") from exc
    if recipient is None:
        raise ScepFailure(FailInfo.BAD_MESSAGE_CHECK, "The message is not encrypted to this server's certificate.")
    if recipient["key_encryption_algorithm"]["algorithm"].native != "rsaes_pkcs1v15":
        raise ScepFailure(FailInfo.BAD_ALG, "Only RSA (PKCS#1 v1.5) key transport is supported.")
    name, cipher_for = _content_cipher(algorithm)
    try:
        key = keys.private_key.decrypt(recipient["encrypted_key"].native, PKCS1v15())
        decryptor = Cipher(cipher_for(key), modes.CBC(algorithm.encryption_iv)).decryptor()
        padded = decryptor.update(ciphertext or b"") + decryptor.finalize()
        unpadder = padding.PKCS7(cipher_for(key).block_size).unpadder()
        return unpadder.update(padded) + unpadder.finalize(), name
    except (ValueError, TypeError) as exc:
        raise ScepFailure(FailInfo.BAD_MESSAGE_CHECK, "The message's envelope does not decrypt.") from exc


def _our_recipient(enveloped: cms.EnvelopedData, certificate: x509.Certificate) -> Any:
    ours = _asn1_certificate(certificate)
    for info in enveloped["recipient_infos"]:
        if info.name == "ktri" and _identifies(info.chosen["rid"], ours):
            return info.chosen
    return None


def _content_cipher(algorithm: algos.EncryptionAlgorithm) -> tuple[str, Any]:
    """The content cipher's name (to answer with the same) and how to make it from a key of the right size."""
    name = algorithm["algorithm"].native
    try:
        cipher, key_length = algorithm.encryption_cipher, algorithm.key_length
        if algorithm.encryption_mode != "cbc":
            cipher = None
    except (ValueError, TypeError, KeyError):
        cipher, key_length = None, 0
    makers = {"aes": algorithms.AES, "tripledes": TripleDES, "des": lambda key: TripleDES(key * 3)}
    if cipher not in makers:
        raise ScepFailure(FailInfo.BAD_ALG, f"The content encryption algorithm {name!r} is not supported.")
    make = makers[cipher]

    def cipher_for(key: bytes) -> CipherAlgorithm:
        if len(key) != key_length:
            raise ValueError("content key of the wrong length")
        return make(key)  # type: ignore[no-any-return]

    return name, cipher_for


def _read_csr(envelope: bytes) -> x509.CertificateSigningRequest:
    try:
        return x509.load_der_x509_csr(envelope)
    except ValueError as exc:
        raise ScepFailure(FailInfo.BAD_REQUEST, "The envelope does not hold a PKCS#10 request.") from exc


def _challenge(csr: x509.CertificateSigningRequest) -> str | None:
    try:
        value = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
    except (x509.AttributeNotFound, ValueError):
        return None
    try:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError:
        return None


# --- Answering ----------------------------------------------------------------------------------


def success(message: PkiMessage, request: CertificateRequest, keys: ScepKeys, issued: x509.Certificate) -> bytes:
    """A CertRep SUCCESS: the issued certificate, encrypted to the requester, signed by us."""
    content = _envelope(degenerate_pkcs7([issued]), request.requester, request.content_algorithm)
    return _cert_rep(message, keys, PkiStatus.SUCCESS, content, extra_certificates=[issued])


def failure(message: PkiMessage, keys: ScepKeys, fail_info: FailInfo) -> bytes:
    """A CertRep FAILURE with its failInfo; no content (RFC 8894 section 3.3.2)."""
    return _cert_rep(message, keys, PkiStatus.FAILURE, None, fail_info=fail_info)


def _cert_rep(
    message: PkiMessage,
    keys: ScepKeys,
    status: PkiStatus,
    content: bytes | None,
    fail_info: FailInfo | None = None,
    extra_certificates: list[x509.Certificate] | None = None,
) -> bytes:
    # Answer with the client's own digest (older clients know only SHA-1); an unknown one gets SHA-256.
    digest = message.digest if message.digest in _DIGESTS else "sha256"
    attributes = [
        _attribute("content_type", "data"),
        _attribute("message_digest", core.OctetString(_hash(digest, content or b""))),
        _attribute(_MESSAGE_TYPE, core.PrintableString(MessageType.CERT_REP.value)),
        _attribute(_PKI_STATUS, core.PrintableString(status.value)),
        _attribute(_TRANSACTION_ID, core.PrintableString(message.transaction_id)),
        _attribute(_RECIPIENT_NONCE, core.OctetString(message.sender_nonce)),
        _attribute(_SENDER_NONCE, core.OctetString(secrets.token_bytes(_NONCE_BYTES))),
    ]
    if fail_info is not None:
        attributes.append(_attribute(_FAIL_INFO, core.PrintableString(fail_info.value)))
    # DER orders a SET OF by encoding; the signature is over exactly these bytes.
    signed_attrs = cms.CMSAttributes(sorted(attributes, key=lambda attribute: attribute.dump()))
    signature = keys.private_key.sign(signed_attrs.dump(), PKCS1v15(), _DIGESTS[digest]())
    ours = _asn1_certificate(keys.certificate)
    signer = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                name="issuer_and_serial_number",
                value={"issuer": ours.issuer, "serial_number": ours.serial_number},
            ),
            "digest_algorithm": {"algorithm": digest},
            "signed_attrs": signed_attrs,
            "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
            "signature": signature,
        }
    )
    encapsulated: dict[str, Any] = {"content_type": "data"}
    if content is not None:
        encapsulated["content"] = content
    signed = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [{"algorithm": digest}],
            "encap_content_info": encapsulated,
            # Some clients take the issued certificate as the first one listed, as micromdm's do.
            "certificates": [_asn1_certificate(c) for c in (extra_certificates or [])] + [ours],
            "signer_infos": [signer],
        }
    )
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


def _envelope(data: bytes, recipient: x509.Certificate, algorithm_name: str) -> bytes:
    """EnvelopedData of `data` for `recipient` (RSA key transport), with the client's own content cipher."""
    algorithm = algos.EncryptionAlgorithm({"algorithm": algorithm_name, "parameters": core.OctetString(b"")})
    _, cipher_for = _content_cipher(algorithm)
    key = secrets.token_bytes(algorithm.key_length)
    cipher = cipher_for(key)
    iv = secrets.token_bytes(cipher.block_size // 8)
    padder = padding.PKCS7(cipher.block_size).padder()
    encryptor = Cipher(cipher, modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(data) + padder.finalize()) + encryptor.finalize()
    public_key = recipient.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)  # open_request refused any other requester
    theirs = _asn1_certificate(recipient)
    enveloped = cms.EnvelopedData(
        {
            "version": "v0",
            "recipient_infos": [
                cms.RecipientInfo(
                    name="ktri",
                    value={
                        "version": "v0",
                        "rid": cms.RecipientIdentifier(
                            name="issuer_and_serial_number",
                            value={"issuer": theirs.issuer, "serial_number": theirs.serial_number},
                        ),
                        "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15"},
                        "encrypted_key": public_key.encrypt(key, PKCS1v15()),
                    },
                )
            ],
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {"algorithm": algorithm_name, "parameters": core.OctetString(iv)},
                "encrypted_content": ciphertext,
            },
        }
    )
    return cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


def _attribute(kind: str, value: Any) -> cms.CMSAttribute:
    return cms.CMSAttribute({"type": kind, "values": [value]})


def _hash(name: str, data: bytes) -> bytes:
    return hashlib.new(name, data).digest()


def _asn1_certificate(certificate: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
