"""The SCEP server (RFC 8894): an Apple device's identity, issued against an enrolment token.

A SCEP client of our own (tests/scep_client.py) speaks to `/scep` as an iPad would: GetCACaps,
GetCACert, then a PKCSReq by POST or GET. A good challenge gets a certificate the school CA vouches
for (checked by `openssl verify`), counts one use of the token and leaves an identity waiting for its
device; every refusal is a CertRep FAILURE with the failInfo RFC 8894 names, and changes nothing.
"""

import base64
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from sqlalchemy import text
from sqlmodel import select

from enrollment.models import AppleIdentity, EnrollmentToken
from mdm.actor import Role
from mdm.audit.models import AuditEvent
from tests import scep_client
from tests.scep_client import new_rsa_key, pkcs_req, read_cert_rep


def make_token(client, auth, **fields) -> dict:
    body = {"category": "school_shared", "expires_in_hours": 72, "max_uses": 1, **fields}
    response = client.post("/api/v1/enrollment-tokens", json=body, headers=auth(Role.technician))
    assert response.status_code == 201, response.text
    return response.json()


def ca_certificate(client) -> x509.Certificate:
    return x509.load_pem_x509_certificate(client.get("/api/v1/pki/ca.pem").content)


def recipients(client) -> list[x509.Certificate]:
    response = client.get("/scep", params={"operation": "GetCACert"})
    assert response.status_code == 200
    return scep_client.recipients_from_ca_cert(response.content, response.headers["content-type"])


def post(client, request: scep_client.Request):
    return client.post(
        "/scep?operation=PKIOperation", content=request.der, headers={"content-type": "application/x-pki-message"}
    )


def answer(client, request: scep_client.Request, method: str = "POST") -> scep_client.CertRep:
    if method == "POST":
        response = post(client, request)
    else:
        message = base64.b64encode(request.der).decode()
        response = client.get("/scep", params={"operation": "PKIOperation", "message": message})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-pki-message"
    rep = read_cert_rep(response.content, request, ca_certificate(client))
    # Every answer, success or failure, belongs to its request.
    assert rep.transaction_id == request.transaction_id
    assert rep.recipient_nonce == request.sender_nonce
    return rep


def identities(database) -> list[AppleIdentity]:
    with database.reading() as session:
        return list(session.exec(select(AppleIdentity)).all())


def uses(database, token_id: str) -> int:
    with database.reading() as session:
        token = session.get(EnrollmentToken, token_id)
        assert token is not None
        return token.uses


def test_get_ca_caps_advertises_what_the_server_does(client):
    response = client.get("/scep", params={"operation": "GetCACaps"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    caps = set(response.text.split())
    assert {"POSTPKIOperation", "SHA-256", "AES", "SCEPStandard", "SHA-1", "DES3"} <= caps
    assert "Renewal" not in caps  # not implemented, so not promised


def test_get_ca_cert_lists_an_rsa_ra_the_school_ca_signed_and_the_ca(client, settings):
    response = client.get("/scep", params={"operation": "GetCACert"})
    assert response.status_code == 200
    # The school CA's key is EC, which no SCEP client can encrypt to: an RSA RA stands in for it.
    assert response.headers["content-type"] == "application/x-x509-ca-ra-cert"
    listed = pkcs7.load_der_pkcs7_certificates(response.content)
    assert len(listed) == 2
    [ca] = [c for c in listed if c == ca_certificate(client)]
    [ra] = [c for c in listed if c != ca]
    ra.verify_directly_issued_by(ca)
    assert isinstance(ra.public_key(), rsa.RSAPublicKey)
    assert ra.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    assert not ra.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # Made once, kept private beside the CA, and the same RA afterwards.
    key_file = settings.data_dir / "ca" / "scep-ra.key.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    again = client.get("/scep", params={"operation": "GetCACert"})
    assert again.content == response.content


@pytest.mark.parametrize(
    ("method", "cipher", "digest"),
    [
        ("POST", "aes128_cbc", "sha256"),
        ("GET", "tripledes_3key", "sha1"),
        ("POST", "aes256_cbc", "sha512"),
        ("GET", "des", "sha1"),
    ],
)
def test_a_good_challenge_gets_an_identity_from_the_school_ca(
    client, auth, database, tmp_path: Path, method, cipher, digest
):
    token = make_token(client, auth, max_uses=2)
    request = pkcs_req(recipients(client), token["token"], cipher=cipher, digest=digest, common_name="iPad identity")
    rep = answer(client, request, method)

    assert (rep.status, rep.fail_info) == ("0", None)
    assert rep.digest == digest  # answered with the client's own digest
    issued = rep.certificate
    assert issued is not None
    assert issued.public_key().public_numbers() == request.key.public_key().public_numbers()
    assert issued.subject.rfc4514_string() == "CN=iPad identity"
    (tmp_path / "ca.pem").write_bytes(client.get("/api/v1/pki/ca.pem").content)
    (tmp_path / "issued.pem").write_bytes(issued.public_bytes(encoding=_pem()))
    verdict = subprocess.run(
        ["openssl", "verify", "-CAfile", tmp_path / "ca.pem", tmp_path / "issued.pem"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr

    assert uses(database, token["id"]) == 1
    [identity] = identities(database)
    assert identity.serial_number == format(issued.serial_number, "x")
    assert identity.token_id == token["id"]
    assert identity.device_id is None  # waits for the device's Authenticate
    assert x509.load_pem_x509_certificate(identity.certificate_pem.encode()) == issued
    with database.reading() as session:
        events = session.exec(select(AuditEvent).where(AuditEvent.action == "apple.identity_issued")).all()
    assert [event.object_id for event in events] == [identity.serial_number]


def test_a_token_enrols_as_many_devices_as_it_allows_then_refuses(client, auth, database):
    token = make_token(client, auth, max_uses=2)
    certs = recipients(client)
    assert answer(client, pkcs_req(certs, token["token"])).status == "0"
    assert answer(client, pkcs_req(certs, token["token"])).status == "0"
    third = answer(client, pkcs_req(certs, token["token"]))
    assert (third.status, third.fail_info) == ("2", "badRequest")
    assert uses(database, token["id"]) == 2
    assert len(identities(database)) == 2


def _expire(database, token_id: str) -> None:
    with database.write_engine.begin() as connection:
        connection.execute(
            text("UPDATE enrollment_token SET expires_at = '2020-01-01 00:00:00' WHERE id = :id"), {"id": token_id}
        )


@pytest.mark.parametrize(
    ("case", "fail_info"),
    [
        ("unknown challenge", "badRequest"),
        ("no challenge", "badRequest"),
        ("expired token", "badTime"),
        ("revoked token", "badRequest"),
        ("category the policy forbids", "badRequest"),
        ("1024-bit key", "badRequest"),
        ("tampered signature", "badMessageCheck"),
        ("signed by another key", "badRequest"),
        ("unsupported cipher", "badAlg"),
        ("not encrypted to the server", "badMessageCheck"),
        ("certificate poll", "badCertId"),
        ("renewal", "badRequest"),
    ],
)
def test_refusals_are_failures_with_the_right_fail_info_and_change_nothing(client, auth, database, case, fail_info):
    category = "visitor_owned" if "policy" in case else "school_shared"
    if "policy" in case:
        forbid = {"allowed": False, "network_access": "none"}
        assert client.put("/api/v1/access-policy/visitor_owned", json=forbid, headers=auth(Role.admin)).is_success
    token = make_token(client, auth, category=category)
    if case == "expired token":
        _expire(database, token["id"])
    if case == "revoked token":
        assert client.delete(f"/api/v1/enrollment-tokens/{token['id']}", headers=auth(Role.admin)).status_code == 204
    certs = recipients(client)
    if case == "not encrypted to the server":
        certs = [scep_client._self_signed(new_rsa_key(), x509.Name([]))]
    challenge = {"unknown challenge": "enr_made-up", "no challenge": None}.get(case, token["token"])
    request = pkcs_req(
        certs,
        challenge,
        key=new_rsa_key(1024) if case == "1024-bit key" else None,
        tamper=case == "tampered signature",
        signer_key=new_rsa_key() if case == "signed by another key" else None,
        cipher="aes128_ecb" if case == "unsupported cipher" else "aes128_cbc",
        message_type={"certificate poll": "20", "renewal": "17"}.get(case, "19"),
    )
    rep = answer(client, request)
    assert (rep.status, rep.fail_info) == ("2", fail_info)
    assert rep.certificate is None
    assert uses(database, token["id"]) == 0
    assert identities(database) == []


@pytest.mark.parametrize(
    ("params", "body", "words"),
    [
        ({"operation": "GetCRL"}, None, "Unknown SCEP operation"),
        ({}, None, "Unknown SCEP operation"),
        ({"operation": "PKIOperation"}, None, "needs message="),
        ({"operation": "PKIOperation", "message": "not base64!"}, None, "needs message="),
        ({"operation": "PKIOperation"}, b"garbage", "not a SCEP PKIMessage"),
        ({"operation": "PKIOperation"}, b"\x30\x03\x02\x01\x00", "not a SCEP PKIMessage"),
    ],
)
def test_what_is_not_scep_is_400_saying_why(client, database, params, body, words):
    response = client.get("/scep", params=params) if body is None else client.post("/scep", params=params, content=body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert words in response.json()["detail"]
    assert identities(database) == []


def test_a_message_without_scep_attributes_is_400(client):
    # A well-formed SignedData that is no SCEP message: nothing to answer a CertRep to.
    from tests.scep_client import _self_signed

    certificate = _self_signed(new_rsa_key(), x509.Name([]))
    degenerate = _degenerate([certificate])
    response = client.post("/scep?operation=PKIOperation", content=degenerate)
    assert response.status_code == 400
    assert "exactly one signer" in response.json()["detail"]


def test_a_body_over_the_limit_is_refused_before_it_is_read(client):
    response = client.post("/scep?operation=PKIOperation", content=b"\x30" * (2 * 1024 * 1024))
    assert response.status_code == 413


def _degenerate(certificates):
    from enrollment.scep import degenerate_pkcs7

    return degenerate_pkcs7(certificates)


def _pem():
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.PEM


def test_openssl_reads_the_cert_rep_as_a_scep_client_would(client, auth, tmp_path: Path):
    """An outside check of the wire format: openssl verifies our signature and opens our envelope."""
    from cryptography.hazmat.primitives import serialization

    token = make_token(client, auth)
    request = pkcs_req(recipients(client), token["token"], cipher="tripledes_3key", digest="sha1")
    response = post(client, request)
    (tmp_path / "ca.pem").write_bytes(client.get("/api/v1/pki/ca.pem").content)
    (tmp_path / "rep.der").write_bytes(response.content)
    (tmp_path / "me.pem").write_bytes(request.signer.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "me.key").write_bytes(
        request.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    decrypt_to = ["-inkey", "me.key", "-out", "certs.der"]
    steps = [
        ["cms", "-verify", "-binary", "-inform", "DER", "-in", "rep.der", "-CAfile", "ca.pem", "-out", "env.der"],
        ["cms", "-decrypt", "-binary", "-inform", "DER", "-in", "env.der", "-recip", "me.pem", *decrypt_to],
        ["pkcs7", "-inform", "DER", "-in", "certs.der", "-print_certs", "-out", "issued.pem"],
        ["verify", "-CAfile", "ca.pem", "issued.pem"],
    ]
    for step in steps:
        result = subprocess.run(["openssl", *step], cwd=tmp_path, capture_output=True, text=True, check=False)
        assert result.returncode == 0, (step, result.stderr)
    issued = x509.load_pem_x509_certificate((tmp_path / "issued.pem").read_bytes())
    assert issued.public_key().public_numbers() == request.key.public_key().public_numbers()


def test_a_ca_with_an_rsa_key_is_its_own_scep_recipient(tmp_path: Path):
    """A CA brought from elsewhere with an RSA key needs no RA: GetCACert is the CA alone, and it answers."""
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives import hashes

    from enrollment import scep
    from enrollment.ca import CertificateAuthority, load_or_create_scep_keys

    key = new_rsa_key()
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "Imported RSA CA")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    keys = load_or_create_scep_keys(tmp_path, CertificateAuthority(certificate, key))
    body, media_type = scep.ca_certificates(keys)
    assert media_type == "application/x-x509-ca-cert"
    assert x509.load_der_x509_certificate(body) == certificate
    assert not (tmp_path / "ca" / "scep-ra.key.pem").exists()

    request = pkcs_req([certificate], "enr_anything")
    message = scep.read_message(request.der)
    opened = scep.open_request(message, keys)
    assert opened.challenge == "enr_anything"
    rep = read_cert_rep(scep.failure(message, keys, scep.FailInfo.BAD_REQUEST), request, certificate)
    assert (rep.status, rep.fail_info, rep.recipient_nonce) == ("2", "badRequest", request.sender_nonce)


def test_guessing_challenges_meets_the_enrolment_limits(client, database):
    # Five refused challenges with one made-up token (MDM_ENROLL_FAILURES_PER_TOKEN): then 429, as on /api/v1/enroll.
    certs, key = recipients(client), new_rsa_key()
    for _ in range(5):
        assert answer(client, pkcs_req(certs, "enr_guess", key=key)).fail_info == "badRequest"
    refused = post(client, pkcs_req(certs, "enr_guess", key=key))
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) > 0
    assert identities(database) == []
