"""The school's built-in certificate authority.

Every device request is trusted because of a certificate issued here, so the CA key is the root of trust
for the whole fleet: it is created once, never silently replaced (a new CA would orphan every enrolled
device), and kept 0600 in the data directory, optionally encrypted with MDM_CA_PASSPHRASE.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mdm.channel.keys import weak_rsa_reason
from mdm.private_files import fsync_dir

logger = logging.getLogger(__name__)

CA_DIR_NAME = "ca"
CA_KEY_FILE = "ca.key.pem"
CA_CERT_FILE = "ca.pem"
SIGNER_KEY_FILE = "profile-signing.key.pem"
SIGNER_CERT_FILE = "profile-signing.pem"
SCEP_RA_KEY_FILE = "scep-ra.key.pem"
SCEP_RA_CERT_FILE = "scep-ra.pem"
PASSPHRASE_ENV = "MDM_CA_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret

# 20 years counted in days, leap days included: the root outlives any device it will ever sign for.
CA_VALIDITY = timedelta(days=7305)
# Fresh devices often have a clock a little behind; backdating keeps a new certificate from being
# "not yet valid" on them (the same hour public CAs use).
CERT_BACKDATE = timedelta(hours=1)
# A CRL fetched by a client whose clock is slightly behind must not look like it comes from the future.
CRL_BACKDATE = timedelta(minutes=5)

MAX_CSR_BYTES = 16 * 1024
ACCEPTED_KEYS = "EC P-256 or RSA of 2048 bits or more (exponent 65537)"
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}

SIGNER_COMMON_NAME = "School MDM Profile Signing"
SIGNER_VALIDITY_DAYS = 825
# Renewing a month early means profiles are never signed with a certificate about to lapse on devices.
SIGNER_RENEW_BEFORE = timedelta(days=30)

# SCEP clients encrypt their request to an RSA certificate; the school CA's key is EC, so an RSA
# "registration authority" certificate of its own receives (and signs the answers to) SCEP messages.
SCEP_RA_COMMON_NAME = "School MDM SCEP RA"
SCEP_RA_KEY_BITS = 2048
# The CN Apple's SCEP payload asks for is kept; a request without a usable one gets this.
APPLE_IDENTITY_DEFAULT_CN = "Apple device"
_MAX_CN_LENGTH = 64  # RFC 5280's ub-common-name

CAPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
CSRPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class CAError(Exception):
    """The CA cannot be created or loaded; the message tells the operator what to do."""


class CSRError(ValueError):
    """A certificate signing request was refused; `detail` is meant for the person enrolling the device."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class IssuedCertificate:
    pem: str
    serial_number: int
    not_after: datetime
    fingerprint_sha256: str


@dataclass(frozen=True)
class ProfileSigner:
    certificate: x509.Certificate
    certificate_pem: str
    private_key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class ScepKeys:
    """The RSA certificate and key SCEP clients encrypt to, and the chain GetCACert lists.

    `certificate` is the CA's own when its key is RSA (then `chain` holds only it), else the SCEP RA's
    (then `chain` is the RA and the CA, as RFC 8894 section 4.2.1.2 answers for an RA).
    """

    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey
    chain: tuple[x509.Certificate, ...]

    @property
    def is_ra(self) -> bool:
        return len(self.chain) > 1


# --- Checking what devices send ------------------------------------------------------------------


def validate_csr(csr_pem: str | bytes) -> x509.CertificateSigningRequest:
    """Parse a CSR and refuse anything we would not want to certify, with a reason a person can act on."""
    data = _csr_bytes(csr_pem)
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise CSRError(
            "The CSR is not a PEM certificate signing request (expected a '-----BEGIN CERTIFICATE REQUEST-----' block)."
        ) from exc
    _check_csr_key(csr)
    _check_csr_signature(csr)
    return csr


def _csr_bytes(csr_pem: str | bytes) -> bytes:
    data = csr_pem.encode("utf-8") if isinstance(csr_pem, str) else bytes(csr_pem)
    if len(data) > MAX_CSR_BYTES:
        # A real CSR is well under 4 KiB; refusing early keeps parsing cost bounded for anonymous callers.
        raise CSRError(f"The CSR is {len(data)} bytes; at most {MAX_CSR_BYTES} bytes are accepted.")
    return data


def _check_csr_key(csr: x509.CertificateSigningRequest) -> None:
    try:
        key = csr.public_key()
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise CSRError(f"The CSR's public key is of a type this service cannot read; use {ACCEPTED_KEYS}.") from exc
    if isinstance(key, rsa.RSAPublicKey):
        reason = weak_rsa_reason(key)
        if reason is not None:
            raise CSRError(f"The CSR's {reason}.")
        return
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return
    raise CSRError(f"The CSR's key is {_describe_key(key)}, which is not accepted; use {ACCEPTED_KEYS}.")


def _check_csr_signature(csr: x509.CertificateSigningRequest) -> None:
    # The signature proves the requester holds the private key; without it anyone could get a
    # certificate for a public key copied from elsewhere.
    try:
        valid = csr.is_signature_valid
    except UnsupportedAlgorithm as exc:
        raise CSRError("The CSR is signed with an algorithm this service does not support.") from exc
    if not valid:
        raise CSRError(
            "The CSR's signature does not verify against its own public key: it was altered or damaged "
            "after it was made. Generate a new CSR."
        )


def _describe_key(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        friendly = _CURVE_NAMES.get(key.curve.name)
        return f"EC {friendly} ({key.curve.name})" if friendly else f"EC on curve {key.curve.name}"
    names = {
        ed25519.Ed25519PublicKey: "Ed25519",
        ed448.Ed448PublicKey: "Ed448",
        dsa.DSAPublicKey: "DSA",
    }
    return next((name for cls, name in names.items() if isinstance(key, cls)), type(key).__name__)


def _require_canonical_uuid(device_id: str) -> str:
    # The id ends up in the certificate's CN and SAN, where the server later matches it byte for byte,
    # so only one spelling of a UUID may ever be used.
    try:
        canonical = str(uuid.UUID(device_id))
    except (ValueError, TypeError, AttributeError):
        canonical = None
    if canonical != device_id:
        raise ValueError(f"device_id must be a lower-case hyphenated UUID, got {device_id!r}")
    return device_id


# --- The authority --------------------------------------------------------------------------------


class CertificateAuthority:
    """Issues device and profile-signing certificates and signs the CRL; holds the CA key in memory."""

    validate_csr = staticmethod(validate_csr)

    def __init__(self, certificate: x509.Certificate, private_key: CAPrivateKey) -> None:
        self.certificate = certificate
        self.certificate_pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        self._private_key = private_key
        self._authority_key_id = _authority_key_identifier(certificate)

    def __repr__(self) -> str:
        # Never let the key's object show up in a log line or a traceback's locals.
        return f"CertificateAuthority(subject={self.certificate.subject.rfc4514_string()!r})"

    def issue_device_certificate(
        self, csr_pem: str | bytes, device_id: str, validity_days: int = 397
    ) -> IssuedCertificate:
        """Certify the CSR's key for `device_id`; the CSR's subject is ignored (the server names devices)."""
        csr = validate_csr(csr_pem)
        device_id = _require_canonical_uuid(device_id)
        builder = (
            self._leaf_builder(csr.public_key(), _name(device_id), validity_days)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"urn:uuid:{device_id}")]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        return self._sign(builder)

    def issue_signing_certificate(
        self,
        public_key: CSRPublicKey,
        common_name: str = SIGNER_COMMON_NAME,
        validity_days: int = SIGNER_VALIDITY_DAYS,
    ) -> IssuedCertificate:
        """Certify a key for signing configuration profiles (no EKU: Apple needs only digitalSignature)."""
        return self._sign(self._leaf_builder(public_key, _name(common_name), validity_days))

    def issue_apple_identity(self, csr_pem: str | bytes, validity_days: int = 397) -> IssuedCertificate:
        """Certify a CSR that SCEP received before any device is known: named by the CSR's own CN.

        The identity is bound to a device later, when the device first signs its Authenticate with it
        (so there is no device id to put in it now); the serial number is what binds it.
        """
        csr = validate_csr(csr_pem)
        builder = self._leaf_builder(csr.public_key(), _name(_csr_common_name(csr)), validity_days).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        return self._sign(builder)

    def issue_scep_ra_certificate(self, public_key: rsa.RSAPublicKey) -> IssuedCertificate:
        """Certify the SCEP RA's key: clients encrypt to it (keyEncipherment) and check its signatures."""
        usage = _key_usage(digital_signature=True, key_encipherment=True)
        return self._sign(self._leaf_builder(public_key, _name(SCEP_RA_COMMON_NAME), SIGNER_VALIDITY_DAYS, usage))

    def scep_keys_if_rsa(self) -> ScepKeys | None:
        """The CA itself as SCEP's recipient, when its key is RSA (then no RA is needed)."""
        if isinstance(self._private_key, rsa.RSAPrivateKey):
            return ScepKeys(self.certificate, self._private_key, (self.certificate,))
        return None

    def build_crl(self, revoked: Iterable[tuple[int, datetime]], crl_number: int, next_update_hours: int = 24) -> bytes:
        """A DER CRL of (serial, revoked_at) pairs; naive datetimes are taken as UTC, like the database's."""
        if crl_number < 0:
            raise ValueError("crl_number must not be negative")
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - CRL_BACKDATE)
            .next_update(now + timedelta(hours=next_update_hours))
            .add_extension(x509.CRLNumber(crl_number), critical=False)
            .add_extension(self._authority_key_id, critical=False)
        )
        for serial_number, revoked_at in revoked:
            entry = x509.RevokedCertificateBuilder().serial_number(serial_number).revocation_date(revoked_at)
            builder = builder.add_revoked_certificate(entry.build())
        crl = builder.sign(self._private_key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.DER)

    def _leaf_builder(
        self,
        public_key: CSRPublicKey,
        subject: x509.Name,
        validity_days: int,
        usage: x509.KeyUsage | None = None,
    ) -> x509.CertificateBuilder:
        if validity_days < 1:
            raise ValueError("validity_days must be at least 1")
        now = _now()
        # A leaf that outlives its issuer fails validation anyway; clamping makes the stated expiry true.
        not_after = min(now + timedelta(days=validity_days), self.certificate.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CERT_BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage or _key_usage(digital_signature=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._authority_key_id, critical=False)
        )

    def _sign(self, builder: x509.CertificateBuilder) -> IssuedCertificate:
        certificate = builder.sign(self._private_key, hashes.SHA256())
        return IssuedCertificate(
            pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            serial_number=certificate.serial_number,
            not_after=certificate.not_valid_after_utc,
            fingerprint_sha256=certificate.fingerprint(hashes.SHA256()).hex(),
        )


def _now() -> datetime:
    return datetime.now(UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _csr_common_name(csr: x509.CertificateSigningRequest) -> str:
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else None
    if isinstance(value, str) and 0 < len(value.strip()) <= _MAX_CN_LENGTH:
        return value.strip()
    return APPLE_IDENTITY_DEFAULT_CN


def _key_usage(**flags: bool) -> x509.KeyUsage:
    # x509.KeyUsage wants all nine flags; naming only the ones we set keeps the intent readable.
    names = [
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    ]
    return x509.KeyUsage(**{name: flags.get(name, False) for name in names})


def _authority_key_identifier(ca_certificate: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        # A CA certificate brought from elsewhere may lack an SKI; derive the same value from its key.
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_certificate.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


# --- Creating and loading the CA ------------------------------------------------------------------


def load_or_create_ca(
    data_dir: Path, passphrase: str | None, common_name: str = "School MDM Root CA"
) -> CertificateAuthority:
    """Load the CA from `data_dir/ca`, creating it on first start.

    An empty passphrase counts as none, since an unset-but-exported MDM_CA_PASSPHRASE arrives as "".
    `common_name` only matters on creation; an existing CA keeps its name.
    """
    ca_dir = data_dir / CA_DIR_NAME
    if not (ca_dir / CA_KEY_FILE).exists() and not (ca_dir / CA_CERT_FILE).exists():
        _create_ca_dir(data_dir, ca_dir, passphrase or None, common_name)
    # Winner or loser of a creation race, everyone loads what is on disk, so there is only ever one CA.
    return _load_ca(ca_dir, passphrase or None)


def _create_ca_dir(data_dir: Path, ca_dir: Path, passphrase: str | None, common_name: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Build the whole CA in a private (0700) staging directory and publish it with one rename, so no
    # process ever sees a key without its certificate, and two processes starting together cannot
    # both win: renaming onto a non-empty directory fails.
    staging = Path(tempfile.mkdtemp(prefix=".ca-staging-", dir=data_dir))
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _self_signed_ca_certificate(key, common_name)
        _write_new_file(staging / CA_KEY_FILE, _private_key_pem(key, passphrase), 0o600)
        _write_new_file(staging / CA_CERT_FILE, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
        fsync_dir(staging)
        try:
            os.rename(staging, ca_dir)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            return  # Another process published its CA first; the caller loads that one.
        fsync_dir(data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _self_signed_ca_certificate(key: ec.EllipticCurvePrivateKey, common_name: str) -> x509.Certificate:
    name = _name(common_name)
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CERT_BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        # path_length=0: this root only ever signs leaves, so a leaked leaf key can never act as a CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _load_ca(ca_dir: Path, passphrase: str | None) -> CertificateAuthority:
    key_path, cert_path = ca_dir / CA_KEY_FILE, ca_dir / CA_CERT_FILE
    missing = [path.name for path in (key_path, cert_path) if not path.exists()]
    if missing:
        # Never paper over a half-present CA with a new one: every enrolled device would be locked out.
        raise CAError(
            f"The certificate authority in {ca_dir} is incomplete ({', '.join(missing)} missing). "
            "Restore the directory from a backup."
        )
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        raise CAError(f"{cert_path} is not a PEM certificate. Restore it from a backup.") from exc
    key = _load_private_key(key_path, passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CAError(f"{key_path} holds a {type(key).__name__}; the CA key must be EC or RSA.")
    if _spki(key.public_key()) != _spki(certificate.public_key()):
        raise CAError(f"{key_path} does not belong to the certificate in {cert_path}.")
    return CertificateAuthority(certificate, key)


def _load_private_key(path: Path, passphrase: str | None) -> PrivateKeyTypes:
    _warn_if_readable_by_others(path)
    password = passphrase.encode("utf-8") if passphrase else None
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password)
    except TypeError as exc:
        # cryptography raises TypeError both for "encrypted, no password" and "password, not encrypted".
        if password is None:
            raise CAError(f"{path} is encrypted: set {PASSPHRASE_ENV} to its passphrase.") from exc
        raise CAError(
            f"{path} is not encrypted, but {PASSPHRASE_ENV} is set: unset {PASSPHRASE_ENV}, "
            "or encrypt the key with that passphrase."
        ) from exc
    except ValueError as exc:
        if password is None:
            raise CAError(f"{path} is not a readable PEM private key. Restore it from a backup.") from exc
        raise CAError(
            f"Could not decrypt {path}: {PASSPHRASE_ENV} is not the passphrase it was encrypted with "
            "(or the file is damaged). Set the right MDM_CA_PASSPHRASE."
        ) from exc


def _warn_if_readable_by_others(path: Path) -> None:
    # A restore or copy can loosen permissions; say so rather than refuse, so the service still starts.
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning("%s has permissions %o; it holds a private key, run: chmod 600 %s", path, mode, path)


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _private_key_pem(key: CAPrivateKey, passphrase: str | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode("utf-8"))
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


# --- The profile signer ---------------------------------------------------------------------------


def load_or_create_profile_signer(
    data_dir: Path, ca: CertificateAuthority, passphrase: str | None = None
) -> ProfileSigner:
    """The key and certificate that sign configuration profiles, created once and kept in `data_dir/ca`.

    The certificate is reissued (same key) when missing, not from this CA, or within 30 days of expiry.
    """
    key, certificate = _load_or_create_leaf(
        data_dir / CA_DIR_NAME,
        (SIGNER_KEY_FILE, SIGNER_CERT_FILE),
        ca,
        passphrase,
        new_key=lambda: ec.generate_private_key(ec.SECP256R1()),
        issue=ca.issue_signing_certificate,
        expected=(ec.EllipticCurvePrivateKey, "the profile signing key must be EC"),
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return ProfileSigner(certificate=certificate, certificate_pem=pem, private_key=key)


def load_or_create_scep_keys(data_dir: Path, ca: CertificateAuthority, passphrase: str | None = None) -> ScepKeys:
    """What SCEP clients encrypt to: the CA itself if its key is RSA, else an RA made once beside it.

    Like the profile signer, the RA's key is kept 0600 in `data_dir/ca` (encrypted with the CA's
    passphrase when there is one) and its certificate is reissued, same key, 30 days before it ends.
    """
    own = ca.scep_keys_if_rsa()
    if own is not None:
        return own
    key, certificate = _load_or_create_leaf(
        data_dir / CA_DIR_NAME,
        (SCEP_RA_KEY_FILE, SCEP_RA_CERT_FILE),
        ca,
        passphrase,
        new_key=lambda: rsa.generate_private_key(public_exponent=65537, key_size=SCEP_RA_KEY_BITS),
        issue=ca.issue_scep_ra_certificate,
        expected=(rsa.RSAPrivateKey, "the SCEP RA key must be RSA"),
    )
    return ScepKeys(certificate=certificate, private_key=key, chain=(certificate, ca.certificate))


def _load_or_create_leaf(
    ca_dir: Path,
    files: tuple[str, str],
    ca: CertificateAuthority,
    passphrase: str | None,
    new_key: Callable[[], CAPrivateKey],
    issue: Callable[[Any], IssuedCertificate],
    expected: tuple[type, str],
) -> tuple[Any, x509.Certificate]:
    key_path, cert_path = ca_dir / files[0], ca_dir / files[1]
    if not key_path.exists():
        _publish_file(key_path, _private_key_pem(new_key(), passphrase or None), 0o600, replace=False)
    # Whoever published the key first, everyone uses the one on disk.
    key = _load_private_key(key_path, passphrase or None)
    key_type, what = expected
    if not isinstance(key, key_type):
        raise CAError(f"{key_path} holds a {type(key).__name__}; {what}.")
    certificate = _usable_leaf_certificate(cert_path, key, ca)
    if certificate is None:
        issued = issue(key.public_key())
        _publish_file(cert_path, issued.pem.encode("ascii"), 0o644, replace=cert_path.exists())
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return key, certificate


def _usable_leaf_certificate(cert_path: Path, key: CAPrivateKey, ca: CertificateAuthority) -> x509.Certificate | None:
    if not cert_path.exists():
        return None
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        certificate.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, UnsupportedAlgorithm, InvalidSignature):
        return None
    if _spki(certificate.public_key()) != _spki(key.public_key()):
        return None
    if certificate.not_valid_after_utc - _now() < SIGNER_RENEW_BEFORE:
        return None
    return certificate


# --- Files ----------------------------------------------------------------------------------------


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    # The mode is set by open(2) itself, so a key is never readable by others, not even for an instant
    # between creating and chmod-ing; O_EXCL refuses to write through a planted file or symlink.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _publish_file(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Make `path` appear complete or not at all; without `replace` the first publisher wins."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    _write_new_file(temporary, data, mode)
    try:
        if replace:
            os.replace(temporary, path)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_dir(path.parent)
