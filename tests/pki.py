"""Keys and CSRs for tests, made the way a device would make them."""

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID


def new_key(kind: str = "ec"):  # type: ignore[no-untyped-def]
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=int(kind.removeprefix("rsa") or 2048))


def csr_pem(key, common_name: str = "device") -> str:  # type: ignore[no-untyped-def]
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


def signed_headers(
    key,
    method: str,
    path: str,
    body: bytes,
    *,
    timestamp: int | None = None,  # type: ignore[no-untyped-def]
    nonce: str | None = None,
) -> dict[str, str]:
    """The device channel's headers, signed with `key`: tests vary each part to see it refused."""
    import time

    from mdm.channel.agent.signature import new_nonce, sign_request

    timestamp = int(time.time()) if timestamp is None else timestamp
    nonce = nonce or new_nonce()
    return {
        "X-MDM-Timestamp": str(timestamp),
        "X-MDM-Nonce": nonce,
        "X-MDM-Signature": sign_request(key, method, path, timestamp, nonce, body),
        "content-type": "application/json",
    }


def openssl_crl_verdict(folder, certificate_pem: str, ca_pem: str, crl_der: bytes) -> str:  # type: ignore[no-untyped-def]
    """What `openssl verify -crl_check` says of a certificate, given the CA and the service's DER CRL."""
    import subprocess

    (folder / "checked.pem").write_text(certificate_pem)
    (folder / "ca.pem").write_text(ca_pem)
    (folder / "crl.der").write_bytes(crl_der)
    subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", folder / "crl.der", "-out", folder / "crl.pem"], check=True
    )
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-crl_check",
            "-CRLfile",
            folder / "crl.pem",
            "-CAfile",
            folder / "ca.pem",
            folder / "checked.pem",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return verify.stdout + verify.stderr
