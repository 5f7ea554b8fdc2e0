"""A simulated Apple device for tests: plist messages, `Mdm-Signature` made with asn1crypto and cryptography.

Its identity comes from `enrol_with_profile`, as an iPad's does: it downloads the enrolment profile a
token's QR code links to, and asks the SCEP server named there for a certificate with the profile's
challenge. `scep_identity` leaves behind what such an enrolment leaves (a school-CA certificate recorded
against the token) for tests about the check-in channel alone. The device talks through any client
with httpx's interface (FastAPI's TestClient, or httpx against a live `mdm serve`).
"""

import base64
import hashlib
import plistlib
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from asn1crypto import algos, cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from enrollment.models import AppleIdentity
from mdm.bootstrap import Runtime
from tests import scep_client
from tests.pki import csr_pem

HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256}
CHECKIN_TYPE = "application/x-apple-aspen-mdm-checkin"


@dataclass
class Identity:
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate


def scep_identity(runtime: Runtime, token_id: str, *, key: rsa.RSAPrivateKey | None = None) -> Identity:
    """What SCEP leaves behind: a school-CA certificate for the device's RSA key, issued against a token."""
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issued = runtime.ca.issue_device_certificate(csr_pem(key), str(uuid.uuid4()), 30)
    certificate = x509.load_pem_x509_certificate(issued.pem.encode())
    with runtime.database.writing() as session:
        session.add(
            AppleIdentity(
                serial_number=format(issued.serial_number, "x"),
                certificate_pem=issued.pem,
                token_id=token_id,
                issued_at=datetime.now(UTC),
                not_after=issued.not_after,
            )
        )
    return Identity(key, certificate)


def enrol_with_profile(client: Any, token_secret: str) -> tuple[Identity, dict[str, Any]]:
    """What an iPad does with a token's QR code: install the profile, get an identity by SCEP.

    Returns the identity and the profile's `com.apple.mdm` payload (its URLs, topic and identifier).
    """
    download = client.get(f"/enroll/{token_secret}.mobileconfig")
    assert download.status_code == 200, download.text
    signed = cms.ContentInfo.load(download.content)["content"]["encap_content_info"]["content"].native
    payloads = {p["PayloadType"]: p for p in plistlib.loads(signed)["PayloadContent"]}
    scep = payloads["com.apple.security.scep"]["PayloadContent"]
    ca_cert = client.get("/scep", params={"operation": "GetCACert"})
    recipients = scep_client.recipients_from_ca_cert(ca_cert.content, ca_cert.headers["content-type"])
    request = scep_client.pkcs_req(recipients, scep["Challenge"], key=scep_client.new_rsa_key(scep["Keysize"]))
    answer = client.post("/scep?operation=PKIOperation", content=request.der)
    school_ca = x509.load_pem_x509_certificate(client.get("/api/v1/pki/ca.pem").content)
    issued = scep_client.read_cert_rep(answer.content, request, school_ca)
    assert issued.status == "0", issued
    assert issued.certificate is not None
    return Identity(request.key, issued.certificate), payloads["com.apple.mdm"]


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

    def put(self, path: str, message: dict[str, Any], *, identity: Identity | None = None, **signing: Any):  # type: ignore[no-untyped-def]
        body = plistlib.dumps(message)
        headers = {
            "Content-Type": CHECKIN_TYPE,
            "Mdm-Signature": mdm_signature(body, identity or self.identity, **signing),
        }
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

    def connect(self, status: str = "Idle", command_uuid: str | None = None, **answer: Any):  # type: ignore[no-untyped-def]
        """Sends a status (and an answer's data); returns the HTTP response."""
        identity = answer.pop("identity", None)
        message: dict[str, Any] = {"Status": status, "UDID": self.udid, **answer}
        if command_uuid is not None:
            message["CommandUUID"] = command_uuid
        return self.put("/mdm/connect", message, identity=identity)


def command_of(response: Any) -> dict[str, Any] | None:
    """The command in a connect answer, or None for the empty body that means nothing is due."""
    assert response.status_code == 200, response.text
    return plistlib.loads(response.content) if response.content else None
