"""A simulated Apple device's side of the MDM protocol: plist messages signed with `Mdm-Signature`.

An iPad signs every check-in and connect body with its SCEP identity: a detached CMS SignedData in the
`Mdm-Signature` header. The tests (tests/apple_device.py) and the benchmarks (bench/apple.py) both
speak as iPads, so the message building and the signing live here once. How a device gets its identity
(SCEP, or a certificate issued directly for a benchmark) is the caller's business. The device talks
through any client with httpx's interface (FastAPI's TestClient, or httpx against a live `mdm serve`).
"""

import base64
import hashlib
import plistlib
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from asn1crypto import algos, cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256}
CHECKIN_TYPE = "application/x-apple-aspen-mdm-checkin"


@dataclass
class Identity:
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate


def mdm_signature(body: bytes, identity: Identity, *, digest: str = "sha256", signed_attributes: bool = True) -> str:
    """The `Mdm-Signature` header: a detached CMS SignedData over the body, as an Apple device makes it."""
    certificate = asn1_x509.Certificate.load(identity.certificate.public_bytes(serialization.Encoding.DER))
    digest_algorithm = algos.DigestAlgorithm({"algorithm": digest})
    signer: dict[str, Any] = {
        "version": "v1",
        "sid": cms.SignerIdentifier(
            {
                "issuer_and_serial_number": cms.IssuerAndSerialNumber(
                    {"issuer": certificate.issuer, "serial_number": certificate.serial_number}
                )
            }
        ),
        "digest_algorithm": digest_algorithm,
        "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"}),
    }
    signed = body
    if signed_attributes:
        attributes = cms.CMSAttributes(
            [
                cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
                cms.CMSAttribute({"type": "message_digest", "values": [hashlib.new(digest, body).digest()]}),
            ]
        )
        signer["signed_attrs"] = attributes
        signed = attributes.dump()
    signer["signature"] = identity.key.sign(signed, padding.PKCS1v15(), HASHES[digest]())
    signed_data = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [digest_algorithm],
            "encap_content_info": {"content_type": "data"},
            "certificates": [certificate],
            "signer_infos": [cms.SignerInfo(signer)],
        }
    )
    content = cms.ContentInfo({"content_type": "signed_data", "content": signed_data})
    return base64.b64encode(content.dump()).decode("ascii")


@dataclass
class AppleDevice:
    """An iPad as the server sees it: its identity, its UDID, and the plists it sends."""

    client: Any
    identity: Identity
    udid: str = field(default_factory=lambda: secrets.token_hex(20))
    serial: str = field(default_factory=lambda: "DMP" + secrets.token_hex(4).upper())
    product_name: str = "iPad13,18"
    os_version: str = "17.5.1"
    push_magic: str = field(default_factory=lambda: str(uuid.uuid4()).upper())
    token: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def signed(
        self, message: dict[str, Any], *, identity: Identity | None = None, **signing: Any
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of a message, as the device sends it."""
        body = plistlib.dumps(message)
        headers = {
            "Content-Type": CHECKIN_TYPE,
            "Mdm-Signature": mdm_signature(body, identity or self.identity, **signing),
        }
        return body, headers

    def put(self, path: str, message: dict[str, Any], *, identity: Identity | None = None, **signing: Any):  # type: ignore[no-untyped-def]
        body, headers = self.signed(message, identity=identity, **signing)
        return self.client.put(path, content=body, headers=headers)

    def checkin(self, message_type: str, **extra: Any):  # type: ignore[no-untyped-def]
        identity = extra.pop("identity", None)
        message = {"MessageType": message_type, "UDID": self.udid, "Topic": "com.apple.mgmt.External.test", **extra}
        return self.put("/mdm/checkin", message, identity=identity)

    def authenticate(self, **extra: Any):  # type: ignore[no-untyped-def]
        facts = {
            "SerialNumber": self.serial,
            "ProductName": self.product_name,
            "OSVersion": self.os_version,
            "BuildVersion": "21F90",
            "DeviceName": "Cart iPad",
        }
        return self.checkin("Authenticate", **{**facts, **extra})

    def token_update(self, **extra: Any):  # type: ignore[no-untyped-def]
        return self.checkin("TokenUpdate", Token=self.token, PushMagic=self.push_magic, **extra)

    def report(self, status: str = "Idle", command_uuid: str | None = None, **answer: Any) -> dict[str, Any]:
        """What a connect carries: a status, and the answer's data when it answers a command."""
        message: dict[str, Any] = {"Status": status, "UDID": self.udid, **answer}
        if command_uuid is not None:
            message["CommandUUID"] = command_uuid
        return message

    def connect(self, status: str = "Idle", command_uuid: str | None = None, **answer: Any):  # type: ignore[no-untyped-def]
        """Sends a status (and an answer's data); returns the HTTP response."""
        identity = answer.pop("identity", None)
        return self.put("/mdm/connect", self.report(status, command_uuid, **answer), identity=identity)
