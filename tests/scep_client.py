"""A SCEP client (RFC 8894), written for the tests the way an iPad or micromdm/scep's client behaves.

It makes an RSA key, a PKCS#10 request with the challenge as challengePassword, a self-signed
certificate of the same key, encrypts the request to every certificate of GetCACert that may be
encrypted to (keyEncipherment, as micromdm/scep's EnciphermentCertsSelector picks), signs it, and
reads the CertRep back: its signature by the server, the nonces, the status and the certificate.
Each part can be spoilt on purpose, so the tests can see every refusal.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import AttributeOID, NameOID

MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
PKI_STATUS = "2.16.840.1.113733.1.9.3"
FAIL_INFO = "2.16.840.1.113733.1.9.4"
SENDER_NONCE = "2.16.840.1.113733.1.9.5"
RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
TRANSACTION_ID = "2.16.840.1.113733.1.9.7"

FAIL_NAMES = {"0": "badAlg", "1": "badMessageCheck", "2": "badRequest", "3": "badTime", "4": "badCertId"}
_HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha512": hashes.SHA512}
_CIPHERS = {
    "aes128_cbc": (16, 16, algorithms.AES),
    "aes256_cbc": (32, 16, algorithms.AES),
    "tripledes_3key": (24, 8, TripleDES),
    "des": (8, 8, lambda key: TripleDES(key * 3)),
    # Not one the server supports: to see badAlg.
    "aes128_ecb": (16, 16, algorithms.AES),
}


@dataclass
class Request:
    """One PKCSReq as sent, and what the client needs to read the answer."""

    der: bytes
    key: rsa.RSAPrivateKey
    signer: x509.Certificate
    transaction_id: str
    sender_nonce: bytes
    csr: x509.CertificateSigningRequest


@dataclass
class CertRep:
    status: str
    fail_info: str | None
    transaction_id: str
    recipient_nonce: bytes
    digest: str
    certificate: x509.Certificate | None = None
    server: x509.Certificate | None = field(default=None, repr=False)


def recipients_from_ca_cert(body: bytes, media_type: str) -> list[x509.Certificate]:
    """GetCACert's certificates: the CA alone (DER), or a degenerate PKCS#7 of the RA and the CA."""
    if media_type.startswith("application/x-x509-ca-cert"):
        return [x509.load_der_x509_certificate(body)]
    return pkcs7.load_der_pkcs7_certificates(body)


def can_encrypt_to(certificate: x509.Certificate) -> bool:
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return isinstance(certificate.public_key(), rsa.RSAPublicKey)
    return isinstance(certificate.public_key(), rsa.RSAPublicKey) and (
        usage.key_encipherment or usage.data_encipherment
    )


def new_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def pkcs_req(
    recipients: list[x509.Certificate],
    challenge: str | None,
    *,
    key: rsa.RSAPrivateKey | None = None,
    cipher: str = "aes128_cbc",
    digest: str = "sha256",
    common_name: str = "School MDM device identity",
    message_type: str = "19",
    tamper: bool = False,
    signer_key: rsa.RSAPrivateKey | None = None,
) -> Request:
    key = key or new_rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    csr = builder.sign(key, hashes.SHA256())
    signing_key = signer_key or key
    signer = _self_signed(signing_key, name)
    envelope = _envelope(
        csr.public_bytes(serialization.Encoding.DER), [r for r in recipients if can_encrypt_to(r)], cipher
    )
    transaction_id = hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).hexdigest()
    nonce = secrets.token_bytes(16)
    attributes = [
        _attribute("content_type", "data"),
        _attribute("message_digest", core.OctetString(hashlib.new(digest, envelope).digest())),
        _attribute(MESSAGE_TYPE, core.PrintableString(message_type)),
        _attribute(TRANSACTION_ID, core.PrintableString(transaction_id)),
        _attribute(SENDER_NONCE, core.OctetString(nonce)),
    ]
    signed_attrs = cms.CMSAttributes(attributes)
    signature = signing_key.sign(signed_attrs.dump(), PKCS1v15(), _HASHES[digest]())
    if tamper:
        signature = bytes([signature[0] ^ 1]) + signature[1:]
    ours = asn1_x509.Certificate.load(signer.public_bytes(serialization.Encoding.DER))
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                name="issuer_and_serial_number", value={"issuer": ours.issuer, "serial_number": ours.serial_number}
            ),
            "digest_algorithm": {"algorithm": digest},
            "signed_attrs": signed_attrs,
            "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
            "signature": signature,
        }
    )
    signed = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [{"algorithm": digest}],
            "encap_content_info": {"content_type": "data", "content": envelope},
            "certificates": [ours],
            "signer_infos": [signer_info],
        }
    )
    der = cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()
    return Request(der, key, signer, transaction_id, nonce, csr)


def read_cert_rep(body: bytes, request: Request, ca: x509.Certificate) -> CertRep:
    """Checks the answer as a careful client would (signed by a certificate from the school CA, our nonce)."""
    signed = cms.ContentInfo.load(body)["content"]
    signer_info = signed["signer_infos"][0]
    sid = signer_info["sid"].chosen
    server = next(
        x509.load_der_x509_certificate(choice.chosen.dump())
        for choice in signed["certificates"]
        if choice.chosen.serial_number == sid["serial_number"].native and choice.chosen.issuer == sid["issuer"]
    )
    if server.fingerprint(hashes.SHA256()) != ca.fingerprint(hashes.SHA256()):
        server.verify_directly_issued_by(ca)
    digest = signer_info["digest_algorithm"]["algorithm"].native
    public_key = server.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    public_key.verify(
        signer_info["signature"].native, b"\x31" + signer_info["signed_attrs"].dump()[1:], PKCS1v15(), _HASHES[digest]()
    )
    values = {a["type"].dotted: a["values"][0] for a in signer_info["signed_attrs"]}
    content = signed["encap_content_info"]["content"]
    data = bytes(content.native) if content.native is not None else b""
    assert values["1.2.840.113549.1.9.4"].native == hashlib.new(digest, data).digest()
    status = values[PKI_STATUS].parse(core.PrintableString).native
    fail = values.get(FAIL_INFO)
    rep = CertRep(
        status=status,
        fail_info=FAIL_NAMES[fail.parse(core.PrintableString).native] if fail is not None else None,
        transaction_id=values[TRANSACTION_ID].parse(core.PrintableString).native,
        recipient_nonce=values[RECIPIENT_NONCE].parse(core.OctetString).native,
        digest=digest,
        server=server,
    )
    assert values[MESSAGE_TYPE].parse(core.PrintableString).native == "3"
    if status == "0":
        certificates = pkcs7.load_der_pkcs7_certificates(_open_envelope(data, request.key))
        rep.certificate = certificates[0]
    return rep


def _self_signed(key: rsa.RSAPrivateKey, name: x509.Name) -> x509.Certificate:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _envelope(data: bytes, recipients: list[x509.Certificate], cipher_name: str) -> bytes:
    key_size, block, make = _CIPHERS[cipher_name]
    key, iv = secrets.token_bytes(key_size), secrets.token_bytes(block)
    padder = padding.PKCS7(block * 8).padder()
    # ECB only to see the server refuse it (badAlg).
    mode = modes.ECB() if cipher_name.endswith("ecb") else modes.CBC(iv)  # noqa: S305
    encryptor = Cipher(make(key), mode).encryptor()
    ciphertext = encryptor.update(padder.update(data) + padder.finalize()) + encryptor.finalize()
    infos = []
    for recipient in recipients:
        theirs = asn1_x509.Certificate.load(recipient.public_bytes(serialization.Encoding.DER))
        public_key = recipient.public_key()
        assert isinstance(public_key, rsa.RSAPublicKey)
        infos.append(
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
        )
    parameters = core.Null() if cipher_name.endswith("ecb") else core.OctetString(iv)
    enveloped = cms.EnvelopedData(
        {
            "version": "v0",
            "recipient_infos": infos,
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {"algorithm": cipher_name, "parameters": parameters},
                "encrypted_content": ciphertext,
            },
        }
    )
    return cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


def _open_envelope(data: bytes, key: rsa.RSAPrivateKey) -> bytes:
    enveloped = cms.ContentInfo.load(data)["content"]
    recipient = enveloped["recipient_infos"][0].chosen
    content_key = key.decrypt(recipient["encrypted_key"].native, PKCS1v15())
    encrypted = enveloped["encrypted_content_info"]
    algorithm = encrypted["content_encryption_algorithm"]
    _, block, make = _CIPHERS[algorithm["algorithm"].native]
    decryptor = Cipher(make(content_key), modes.CBC(algorithm.encryption_iv)).decryptor()
    padded = decryptor.update(encrypted["encrypted_content"].native) + decryptor.finalize()
    unpadder = padding.PKCS7(block * 8).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def _attribute(kind: str, value: Any) -> cms.CMSAttribute:
    return cms.CMSAttribute({"type": kind, "values": [value]})
