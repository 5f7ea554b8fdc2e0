"""A simulated Apple device for tests: how it gets its identity, and reading the server's answers.

The device itself (plist messages, `Mdm-Signature`) is mdm.simulator.apple, shared with the benchmarks.
Its identity comes from `enrol_with_profile`, as an iPad's does: it downloads the enrolment profile a
token's QR code links to, and asks the SCEP server named there for a certificate with the profile's
challenge. `scep_identity` leaves behind what such an enrolment leaves (a school-CA certificate recorded
against the token) for tests about the check-in channel alone.
"""

import plistlib
import uuid
from datetime import UTC, datetime
from typing import Any

from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from enrollment.models import AppleIdentity
from mdm.bootstrap import Runtime
from mdm.simulator.apple import AppleDevice, Identity, mdm_signature
from tests import scep_client
from tests.pki import csr_pem

__all__ = [
    "AppleDevice",
    "Identity",
    "command_of",
    "enrol_with_profile",
    "mdm_signature",
    "scep_identity",
]


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


def command_of(response: Any) -> dict[str, Any] | None:
    """The command in a connect answer, or None for the empty body that means nothing is due."""
    assert response.status_code == 200, response.text
    return plistlib.loads(response.content) if response.content else None
