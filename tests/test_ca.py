"""The built-in CA, checked where possible by the real `openssl` binary a school's technician would use."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import enrollment.ca as ca_module
from enrollment.ca import (
    MAX_CSR_BYTES,
    CAError,
    CertificateAuthority,
    CSRError,
    load_or_create_ca,
    load_or_create_profile_signer,
    validate_csr,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def openssl(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )


def openssl_ok(*args: str | Path, cwd: Path) -> str:
    result = openssl(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def openssl_csr(workdir: Path, *newkey: str, subject: str = "/CN=ignored-by-the-ca") -> str:
    """A CSR made the way a technician or agent would make one, with its key left in `workdir`."""
    name = uuid.uuid4().hex
    openssl_ok(
        "req", "-new", "-nodes", *newkey, "-subj", subject,
        "-keyout", f"{name}.key", "-out", f"{name}.csr",
        cwd=workdir,
    )  # fmt: skip
    return (workdir / f"{name}.csr").read_text()


P256 = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
RSA2048 = ("-newkey", "rsa:2048")


def fingerprint(authority: CertificateAuthority) -> bytes:
    return authority.certificate.fingerprint(hashes.SHA256())


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return load_or_create_ca(tmp_path, None)


@pytest.fixture
def ca_dir(tmp_path: Path, ca: CertificateAuthority) -> Path:
    return tmp_path / "ca"


def issue_to_file(ca: CertificateAuthority, workdir: Path, csr: str) -> tuple[str, Path]:
    device_id = str(uuid.uuid4())
    issued = ca.issue_device_certificate(csr, device_id)
    path = workdir / f"{device_id}.pem"
    path.write_text(issued.pem)
    return device_id, path


# --- Creating and loading -------------------------------------------------------------------------


def test_first_start_creates_a_root_that_openssl_reads_as_a_signing_only_ca(ca_dir: Path) -> None:
    text = openssl_ok("x509", "-in", "ca.pem", "-noout", "-text", cwd=ca_dir)

    assert "Subject: CN = School MDM Root CA" in text
    assert "X509v3 Basic Constraints: critical\n                CA:TRUE" in text
    assert "X509v3 Key Usage: critical\n                Certificate Sign, CRL Sign" in text
    assert "X509v3 Subject Key Identifier" in text
    assert "ASN1 OID: prime256v1" in text


def test_root_is_valid_for_twenty_years(ca: CertificateAuthority) -> None:
    lifetime = ca.certificate.not_valid_after_utc - datetime.now(UTC)

    assert timedelta(days=365 * 20) <= lifetime <= timedelta(days=7306)


def test_ca_key_is_0600_and_its_directory_0700_even_under_a_permissive_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        load_or_create_ca(tmp_path, None)
    finally:
        os.umask(previous)

    assert stat.S_IMODE((tmp_path / "ca" / "ca.key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700


def test_later_starts_load_the_same_ca(tmp_path: Path, ca: CertificateAuthority) -> None:
    again = load_or_create_ca(tmp_path, None, common_name="A different name is ignored once created")

    assert fingerprint(again) == fingerprint(ca)
    assert again.certificate_pem == (tmp_path / "ca" / "ca.pem").read_text()


def test_a_passphrase_protected_ca_cannot_be_loaded_without_it(tmp_path: Path) -> None:
    created = load_or_create_ca(tmp_path, "correct horse")
    key_pem = (tmp_path / "ca" / "ca.key.pem").read_text()

    assert key_pem.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert openssl("pkey", "-in", "ca/ca.key.pem", "-passin", "pass:", cwd=tmp_path).returncode != 0
    with pytest.raises(CAError, match="set MDM_CA_PASSPHRASE"):
        load_or_create_ca(tmp_path, None)
    with pytest.raises(CAError, match="MDM_CA_PASSPHRASE"):
        load_or_create_ca(tmp_path, "wrong horse")
    assert fingerprint(load_or_create_ca(tmp_path, "correct horse")) == fingerprint(created)


def test_a_passphrase_for_an_unencrypted_ca_key_is_reported_not_ignored(tmp_path: Path) -> None:
    load_or_create_ca(tmp_path, None)

    with pytest.raises(CAError, match=r"not encrypted.*MDM_CA_PASSPHRASE"):
        load_or_create_ca(tmp_path, "set later")
    # An exported but empty variable means no passphrase, not the empty passphrase.
    load_or_create_ca(tmp_path, "")


def test_a_ca_with_its_key_missing_is_refused_rather_than_replaced(tmp_path: Path) -> None:
    load_or_create_ca(tmp_path, None)
    certificate_before = (tmp_path / "ca" / "ca.pem").read_bytes()
    (tmp_path / "ca" / "ca.key.pem").unlink()

    with pytest.raises(CAError, match=r"incomplete \(ca.key.pem missing\).*backup"):
        load_or_create_ca(tmp_path, None)
    assert (tmp_path / "ca" / "ca.pem").read_bytes() == certificate_before


def test_threads_starting_together_end_up_with_one_ca(tmp_path: Path) -> None:
    count = 8
    barrier = threading.Barrier(count)
    results: list[bytes] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            results.append(fingerprint(load_or_create_ca(tmp_path, "pass")))
        except BaseException as exc:  # collected so a failure shows up in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert len(results) == count
    assert set(results) == {fingerprint(load_or_create_ca(tmp_path, "pass"))}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ca"]


def test_processes_starting_together_end_up_with_one_ca(tmp_path: Path) -> None:
    # Each child imports everything first, then waits for "go", so the creations really overlap.
    script = (
        "import sys; from pathlib import Path; from cryptography.hazmat.primitives import hashes\n"
        "from enrollment.ca import load_or_create_ca\n"
        "print('ready', flush=True); sys.stdin.readline()\n"
        "ca = load_or_create_ca(Path(sys.argv[1]), None)\n"
        "print(ca.certificate.fingerprint(hashes.SHA256()).hex())\n"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    outputs = [child.communicate(timeout=60)[0].strip() for child in children]

    assert all(child.returncode == 0 for child in children)
    assert set(outputs) == {fingerprint(load_or_create_ca(tmp_path, None)).hex()}


def test_losing_the_creation_race_loads_the_winners_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generate = ca_module._self_signed_ca_certificate
    winner: list[CertificateAuthority] = []
    calls = 0

    def another_process_finishes_first(key: ec.EllipticCurvePrivateKey, name: str) -> x509.Certificate:
        # While we generate, a second process creates and publishes its own CA in the same directory.
        nonlocal calls
        calls += 1
        if calls == 1:
            winner.append(load_or_create_ca(tmp_path, None))
        return generate(key, name)

    monkeypatch.setattr(ca_module, "_self_signed_ca_certificate", another_process_finishes_first)

    loser = load_or_create_ca(tmp_path, None)

    assert fingerprint(loser) == fingerprint(winner[0])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ca"]


# --- Device certificates --------------------------------------------------------------------------


@pytest.mark.parametrize("newkey", [P256, RSA2048], ids=["ec-p256", "rsa-2048"])
def test_device_certificate_verifies_against_the_ca_with_openssl(
    ca: CertificateAuthority, ca_dir: Path, tmp_path: Path, newkey: tuple[str, ...]
) -> None:
    _, cert_path = issue_to_file(ca, tmp_path, openssl_csr(tmp_path, *newkey))

    output = openssl_ok("verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", ca_dir / "ca.pem",
                        cert_path, cwd=tmp_path)  # fmt: skip

    assert output.strip().endswith(": OK")


def test_device_certificate_names_the_device_not_the_csr_subject(ca: CertificateAuthority, tmp_path: Path) -> None:
    csr = openssl_csr(tmp_path, *P256, subject="/CN=someone-else/O=Another School")
    device_id, cert_path = issue_to_file(ca, tmp_path, csr)

    text = openssl_ok("x509", "-in", cert_path, "-noout", "-text", cwd=tmp_path)

    assert f"Subject: CN = {device_id}\n" in text
    assert "someone-else" not in text
    assert "Another School" not in text
    assert f"URI:urn:uuid:{device_id}" in text
    assert "X509v3 Extended Key Usage: \n                TLS Web Client Authentication\n" in text
    assert "X509v3 Key Usage: critical\n                Digital Signature\n" in text
    assert "X509v3 Basic Constraints: critical\n                CA:FALSE" in text


def test_device_certificate_points_at_the_ca_key_that_signed_it(ca: CertificateAuthority, tmp_path: Path) -> None:
    _, cert_path = issue_to_file(ca, tmp_path, openssl_csr(tmp_path, *P256))
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())

    authority_key = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_key = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert authority_key.key_identifier == ca_key.digest


def test_issued_certificate_reports_what_openssl_sees(ca: CertificateAuthority, tmp_path: Path) -> None:
    issued = ca.issue_device_certificate(openssl_csr(tmp_path, *P256), str(uuid.uuid4()))
    (tmp_path / "device.pem").write_text(issued.pem)

    serial = openssl_ok("x509", "-in", "device.pem", "-noout", "-serial", cwd=tmp_path)
    digest = openssl_ok("x509", "-in", "device.pem", "-noout", "-fingerprint", "-sha256", cwd=tmp_path)

    assert int(serial.strip().removeprefix("serial="), 16) == issued.serial_number
    assert digest.strip().split("=", 1)[1].replace(":", "").lower() == issued.fingerprint_sha256
    assert abs(issued.not_after - (datetime.now(UTC) + timedelta(days=397))) < timedelta(minutes=1)


def test_serial_numbers_are_random_159_bit_and_never_repeat(ca: CertificateAuthority, tmp_path: Path) -> None:
    csr = openssl_csr(tmp_path, *P256)
    serials = [ca.issue_device_certificate(csr, str(uuid.uuid4())).serial_number for _ in range(20)]

    assert len(set(serials)) == len(serials)
    assert all(0 < serial < 2**159 for serial in serials)
    # 20 random serials all shorter than 150 bits would mean the randomness is missing.
    assert max(serial.bit_length() for serial in serials) > 150


def test_device_id_must_be_a_canonical_uuid(ca: CertificateAuthority, tmp_path: Path) -> None:
    csr = openssl_csr(tmp_path, *P256)

    with pytest.raises(ValueError, match="UUID"):
        ca.issue_device_certificate(csr, str(uuid.uuid4()).upper())
    with pytest.raises(ValueError, match="UUID"):
        ca.issue_device_certificate(csr, "ipad-7")


# --- Refused CSRs ---------------------------------------------------------------------------------


def tampered_csr(workdir: Path) -> str:
    # Changing the subject after signing is what a man in the middle would do; the signature must catch it.
    csr = x509.load_pem_x509_csr(openssl_csr(workdir, *P256, subject="/CN=device-AAAA").encode())
    der = csr.public_bytes(serialization.Encoding.DER).replace(b"device-AAAA", b"device-BBBB")
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


NOT_PEM = "not a PEM certificate signing request"
REFUSED_CSRS: dict[str, tuple[Callable[[Path], str], str]] = {
    "garbage": (lambda _: "hello, I am an iPad", NOT_PEM),
    "empty": (lambda _: "", NOT_PEM),
    "a-certificate": (lambda tmp: (tmp / "ca" / "ca.pem").read_text(), NOT_PEM),
    "tampered": (tampered_csr, "signature does not verify"),
    "rsa-1024": (
        lambda tmp: openssl_csr(tmp, "-newkey", "rsa:1024"),
        "RSA key is 1024 bits; at least 2048 bits are required",
    ),
    # e=3 invites the low-exponent attacks (Bleichenbacher's 2006 signature forgery); everyone uses 65537.
    "rsa-exponent-3": (
        lambda tmp: openssl_csr(tmp, "-newkey", "rsa:2048", "-pkeyopt", "rsa_keygen_pubexp:3"),
        "RSA key's public exponent is 3; only 65537 is accepted",
    ),
    "ed25519": (
        lambda tmp: openssl_csr(tmp, "-newkey", "ed25519"),
        "key is Ed25519, which is not accepted; use EC P-256 or RSA of 2048 bits or more",
    ),
    "p-384": (
        lambda tmp: openssl_csr(tmp, "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"),
        r"key is EC P-384 \(secp384r1\), which is not accepted; use EC P-256 or RSA of 2048 bits or more",
    ),
    "oversized": (lambda _: "A" * (MAX_CSR_BYTES + 1), f"at most {MAX_CSR_BYTES} bytes"),
}


@pytest.mark.parametrize(("make_csr", "detail"), REFUSED_CSRS.values(), ids=REFUSED_CSRS.keys())
def test_unacceptable_csrs_are_refused_with_a_reason(
    ca: CertificateAuthority, tmp_path: Path, make_csr: Callable[[Path], str], detail: str
) -> None:
    csr = make_csr(tmp_path)

    with pytest.raises(CSRError, match=detail) as refused:
        ca.issue_device_certificate(csr, str(uuid.uuid4()))
    assert refused.value.detail == str(refused.value)
    with pytest.raises(CSRError, match=detail):
        validate_csr(csr.encode())


def test_acceptable_csrs_pass_validation_as_text_or_bytes(tmp_path: Path) -> None:
    for newkey in (P256, RSA2048):
        csr = openssl_csr(tmp_path, *newkey)
        assert validate_csr(csr).is_signature_valid
        assert validate_csr(csr.encode()).is_signature_valid


# --- Revocation -----------------------------------------------------------------------------------


def write_crl(ca: CertificateAuthority, workdir: Path, revoked: list[tuple[int, datetime]], number: int) -> Path:
    (workdir / "crl.der").write_bytes(ca.build_crl(revoked, number))
    openssl_ok("crl", "-inform", "DER", "-in", "crl.der", "-out", "crl.pem", cwd=workdir)
    return workdir / "crl.pem"


def test_a_revoked_device_certificate_fails_openssl_crl_check(
    ca: CertificateAuthority, ca_dir: Path, tmp_path: Path
) -> None:
    _, revoked_cert = issue_to_file(ca, tmp_path, openssl_csr(tmp_path, *P256))
    _, kept_cert = issue_to_file(ca, tmp_path, openssl_csr(tmp_path, *P256))
    serial = x509.load_pem_x509_certificate(revoked_cert.read_bytes()).serial_number
    crl = write_crl(ca, tmp_path, [(serial, datetime.now(UTC))], 1)

    def verify(cert: Path) -> subprocess.CompletedProcess[str]:
        return openssl("verify", "-crl_check", "-CRLfile", crl, "-CAfile", ca_dir / "ca.pem", cert, cwd=tmp_path)

    revoked = verify(revoked_cert)
    assert revoked.returncode != 0
    assert "certificate revoked" in revoked.stdout + revoked.stderr
    assert verify(kept_cert).returncode == 0


def test_crl_is_signed_by_the_ca_and_its_number_increases(
    ca: CertificateAuthority, ca_dir: Path, tmp_path: Path
) -> None:
    numbers = []
    for number in (1, 2):
        crl = write_crl(ca, tmp_path, [(12345, datetime(2025, 1, 1))], number)
        checked = openssl("crl", "-in", crl, "-CAfile", ca_dir / "ca.pem", "-noout", "-text", cwd=tmp_path)
        assert "verify OK" in checked.stdout + checked.stderr
        text = checked.stdout
        assert "X509v3 Authority Key Identifier" in text
        assert "Serial Number: 3039" in text
        numbers.append(int(text.split("X509v3 CRL Number: \n")[1].split()[0]))

    assert numbers == [1, 2]


def test_crl_says_when_to_fetch_the_next_one(ca: CertificateAuthority) -> None:
    crl = x509.load_der_x509_crl(ca.build_crl([], 1, next_update_hours=6))

    assert crl.next_update_utc is not None
    assert abs(crl.next_update_utc - (datetime.now(UTC) + timedelta(hours=6))) < timedelta(minutes=1)
    assert crl.last_update_utc <= datetime.now(UTC)
    assert crl.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]


# --- Profile signing ------------------------------------------------------------------------------


def test_profile_signer_is_created_once_and_reused(tmp_path: Path, ca: CertificateAuthority) -> None:
    first = load_or_create_profile_signer(tmp_path, ca)
    key_pem = (tmp_path / "ca" / "profile-signing.key.pem").read_bytes()
    second = load_or_create_profile_signer(tmp_path, ca)

    assert second.certificate == first.certificate
    assert (tmp_path / "ca" / "profile-signing.key.pem").read_bytes() == key_pem
    assert stat.S_IMODE((tmp_path / "ca" / "profile-signing.key.pem").stat().st_mode) == 0o600
    assert (tmp_path / "ca" / "profile-signing.pem").read_text() == first.certificate_pem


def test_a_profile_signed_with_the_signer_verifies_against_the_ca(
    tmp_path: Path, ca: CertificateAuthority, ca_dir: Path
) -> None:
    load_or_create_profile_signer(tmp_path, ca)
    profile = '<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0"><dict/></plist>\n'
    (tmp_path / "profile.mobileconfig").write_text(profile)

    openssl_ok("cms", "-sign", "-nodetach", "-binary", "-in", "profile.mobileconfig", "-outform", "DER",
               "-signer", ca_dir / "profile-signing.pem", "-inkey", ca_dir / "profile-signing.key.pem",
               "-out", "signed.mobileconfig", cwd=tmp_path)  # fmt: skip
    verified = openssl("cms", "-verify", "-inform", "DER", "-in", "signed.mobileconfig",
                       "-CAfile", ca_dir / "ca.pem", cwd=tmp_path)  # fmt: skip

    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == profile


def test_profile_signing_key_is_encrypted_when_the_ca_has_a_passphrase(tmp_path: Path) -> None:
    ca = load_or_create_ca(tmp_path, "pass")
    load_or_create_profile_signer(tmp_path, ca, "pass")

    key_pem = (tmp_path / "ca" / "profile-signing.key.pem").read_text()
    assert key_pem.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(CAError, match="set MDM_CA_PASSPHRASE"):
        load_or_create_profile_signer(tmp_path, ca)


def test_a_profile_signer_near_expiry_is_renewed_with_the_same_key(tmp_path: Path, ca: CertificateAuthority) -> None:
    first = load_or_create_profile_signer(tmp_path, ca)
    expiring = ca.issue_signing_certificate(first.private_key.public_key(), validity_days=10)
    (tmp_path / "ca" / "profile-signing.pem").write_text(expiring.pem)

    renewed = load_or_create_profile_signer(tmp_path, ca)

    assert renewed.certificate.serial_number != expiring.serial_number
    assert renewed.certificate.not_valid_after_utc > datetime.now(UTC) + timedelta(days=800)
    assert renewed.certificate.public_key() == first.certificate.public_key()
    assert (tmp_path / "ca" / "profile-signing.pem").read_text() == renewed.certificate_pem
