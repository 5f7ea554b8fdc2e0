"""The device channel's signature, cross-checked against `openssl dgst` so any agent can interoperate."""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from mdm.channel.agent.signature import (
    SignatureError,
    SigningKey,
    VerifyingKey,
    canonical_request,
    check_nonce_format,
    check_timestamp,
    new_nonce,
    sign_request,
    verify_request_signature,
)

PATH = "/api/v1/devices/7f1c0d9e-3b1a-4c55-9f7e-2f6a4f0c1d2e/checkin?full=1"
TIMESTAMP = 1_718_000_000
NONCE = "Zx8_-abcdefghijk"
BODY = b'{"inventory": {"os_version": "17.5.1"}}'
_PKCS1 = (padding.PKCS1v15(), hashes.SHA256())


@dataclass(frozen=True)
class OpensslKey:
    private_path: Path
    public_path: Path

    def private_key(self) -> SigningKey:
        key = serialization.load_pem_private_key(self.private_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        return key

    def public_key(self) -> VerifyingKey:
        key = serialization.load_pem_public_key(self.public_path.read_bytes())
        assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        return key


def openssl(*args: str | Path, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, input=stdin, capture_output=True, check=False, timeout=60
    )


def make_openssl_key(workdir: Path, name: str, *genpkey: str) -> OpensslKey:
    assert openssl("genpkey", *genpkey, "-out", f"{name}.key", cwd=workdir).returncode == 0
    assert openssl("pkey", "-in", f"{name}.key", "-pubout", "-out", f"{name}.pub", cwd=workdir).returncode == 0
    return OpensslKey(workdir / f"{name}.key", workdir / f"{name}.pub")


@pytest.fixture(scope="module", params=["ec-p256", "rsa-2048"])
def device_key(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> OpensslKey:
    workdir = tmp_path_factory.mktemp("keys")
    if request.param == "ec-p256":
        return make_openssl_key(workdir, "ec", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
    return make_openssl_key(workdir, "rsa", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048")


def signed(key: OpensslKey) -> str:
    return sign_request(key.private_key(), "POST", PATH, TIMESTAMP, NONCE, BODY)


# --- The canonical bytes --------------------------------------------------------------------------


def test_canonical_request_is_the_documented_five_lines() -> None:
    assert canonical_request("post", "/checkin?a=1", 1718000000, "abcdefghijklmnop", b"{}") == (
        b"POST\n/checkin?a=1\n1718000000\nabcdefghijklmnop\n"
        b"44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    )


def test_an_empty_body_is_hashed_not_skipped() -> None:
    assert canonical_request("GET", "/x", 1, NONCE, b"").endswith(
        b"\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_a_newline_inside_a_field_is_refused() -> None:
    with pytest.raises(SignatureError, match="path must not contain a newline"):
        canonical_request("POST", "/a\n/b", TIMESTAMP, NONCE, BODY)


# --- Signing and verifying ------------------------------------------------------------------------


def test_openssl_made_keys_round_trip(device_key: OpensslKey) -> None:
    verify_request_signature(device_key.public_key(), signed(device_key), "POST", PATH, TIMESTAMP, NONCE, BODY)


def test_the_method_is_compared_case_insensitively(device_key: OpensslKey) -> None:
    signature = sign_request(device_key.private_key(), "post", PATH, TIMESTAMP, NONCE, BODY)

    verify_request_signature(device_key.public_key(), signature, "POST", PATH, TIMESTAMP, NONCE, BODY)


def test_a_signature_made_by_openssl_dgst_verifies(device_key: OpensslKey, tmp_path: Path) -> None:
    (tmp_path / "request.txt").write_bytes(canonical_request("POST", PATH, TIMESTAMP, NONCE, BODY))
    made = openssl("dgst", "-sha256", "-sign", device_key.private_path, "request.txt", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    signature = base64.b64encode(made.stdout).decode()

    verify_request_signature(device_key.public_key(), signature, "POST", PATH, TIMESTAMP, NONCE, BODY)


def test_our_signature_verifies_with_openssl_dgst(device_key: OpensslKey, tmp_path: Path) -> None:
    (tmp_path / "request.txt").write_bytes(canonical_request("POST", PATH, TIMESTAMP, NONCE, BODY))
    (tmp_path / "request.sig").write_bytes(base64.b64decode(signed(device_key)))

    checked = openssl("dgst", "-sha256", "-verify", device_key.public_path, "-signature", "request.sig",
                      "request.txt", cwd=tmp_path)  # fmt: skip

    assert checked.stdout.strip() == b"Verified OK"


def flip_one_bit(signature_b64: str) -> str:
    raw = bytearray(base64.b64decode(signature_b64))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    ("change", "request_fields"),
    [
        ("a flipped bit", ("POST", PATH, TIMESTAMP, NONCE, BODY)),
        ("another path", ("POST", PATH.replace("checkin", "commands"), TIMESTAMP, NONCE, BODY)),
        ("another query", ("POST", PATH.replace("full=1", "full=0"), TIMESTAMP, NONCE, BODY)),
        ("another body", ("POST", PATH, TIMESTAMP, NONCE, BODY.replace(b"17.5.1", b"17.5.2"))),
        ("another method", ("PUT", PATH, TIMESTAMP, NONCE, BODY)),
        ("another timestamp", ("POST", PATH, TIMESTAMP + 1, NONCE, BODY)),
        ("another nonce", ("POST", PATH, TIMESTAMP, NONCE[::-1], BODY)),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_any_change_to_the_request_fails_verification(
    device_key: OpensslKey, change: str, request_fields: tuple[str, str, int, str, bytes]
) -> None:
    signature = signed(device_key)
    if change == "a flipped bit":
        signature = flip_one_bit(signature)

    with pytest.raises(SignatureError, match="does not match this request"):
        verify_request_signature(device_key.public_key(), signature, *request_fields)


def test_another_devices_key_fails_verification(device_key: OpensslKey) -> None:
    other = ec.generate_private_key(ec.SECP256R1()).public_key()

    with pytest.raises(SignatureError, match="does not match this request"):
        verify_request_signature(other, signed(device_key), "POST", PATH, TIMESTAMP, NONCE, BODY)


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        ("not base64!", "not valid base64"),
        ("QUJ", "not valid base64"),
        ("", "missing"),
        ("A" * 5000, "too long"),
    ],
)
def test_a_malformed_signature_header_is_refused(device_key: OpensslKey, header: str, detail: str) -> None:
    with pytest.raises(SignatureError, match=detail):
        verify_request_signature(device_key.public_key(), header, "POST", PATH, TIMESTAMP, NONCE, BODY)


def test_keys_other_than_ec_p256_and_rsa_are_refused() -> None:
    ed_key = ed25519.Ed25519PrivateKey.generate()
    p384_key = ec.generate_private_key(ec.SECP384R1())
    signature = base64.b64encode(b"x" * 64).decode()

    with pytest.raises(SignatureError, match="Ed25519PublicKey keys cannot sign device requests"):
        verify_request_signature(ed_key.public_key(), signature, "POST", PATH, TIMESTAMP, NONCE, BODY)  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="Ed25519PrivateKey keys cannot sign device requests"):
        sign_request(ed_key, "POST", PATH, TIMESTAMP, NONCE, BODY)  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match=r"must be on P-256.*secp384r1"):
        verify_request_signature(p384_key.public_key(), signature, "POST", PATH, TIMESTAMP, NONCE, BODY)
    with pytest.raises(SignatureError, match=r"must be on P-256.*secp384r1"):
        sign_request(p384_key, "POST", PATH, TIMESTAMP, NONCE, BODY)


@pytest.mark.parametrize(
    ("exponent", "bits", "detail"),
    [(3, 2048, "public exponent is 3; only 65537"), (65537, 1024, "1024 bits; at least 2048")],
)
def test_weak_rsa_keys_are_refused(exponent: int, bits: int, detail: str) -> None:
    weak = rsa.generate_private_key(public_exponent=exponent, key_size=bits)
    with pytest.raises(SignatureError, match=detail):
        sign_request(weak, "POST", PATH, TIMESTAMP, NONCE, BODY)
    signature = base64.b64encode(weak.sign(canonical_request("POST", PATH, TIMESTAMP, NONCE, BODY), *_PKCS1)).decode()
    with pytest.raises(SignatureError, match=detail):
        verify_request_signature(weak.public_key(), signature, "POST", PATH, TIMESTAMP, NONCE, BODY)


# --- Timestamp and nonce --------------------------------------------------------------------------

NOW = 1_718_000_000.0


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_a_timestamp_within_300_seconds_is_accepted(offset: int) -> None:
    assert check_timestamp(str(int(NOW) + offset), NOW) == int(NOW) + offset


@pytest.mark.parametrize(("offset", "detail"), [(-301, "301 s behind"), (301, "301 s ahead of")])
def test_a_timestamp_just_over_300_seconds_away_is_refused(offset: int, detail: str) -> None:
    with pytest.raises(SignatureError, match=f"{detail} the server's clock; at most 300 s"):
        check_timestamp(str(int(NOW) + offset), NOW)


def test_a_fractional_server_clock_still_refuses_just_past_the_limit() -> None:
    with pytest.raises(SignatureError, match="301 s behind"):
        check_timestamp(str(int(NOW) - 300), NOW + 0.5)


@pytest.mark.parametrize("header", ["", "soon", "1718000000.5", "+1718000000", " 1718000000", "-5", "1e9", "١٧١٨"])
def test_a_timestamp_that_is_not_whole_unix_seconds_is_refused(header: str) -> None:
    with pytest.raises(SignatureError, match="must be Unix time in whole seconds"):
        check_timestamp(header, NOW)


@pytest.mark.parametrize("nonce", ["a" * 16, "Z" * 64, "A-b_C9" * 3])
def test_a_well_formed_nonce_is_accepted(nonce: str) -> None:
    assert check_nonce_format(nonce) == nonce


@pytest.mark.parametrize(
    "nonce",
    ["a" * 15, "a" * 65, "", "with a space here", "slash/slash/slash", "a" * 16 + "\n", "é" * 16, "a+b=" * 5],
    ids=["15-chars", "65-chars", "empty", "space", "slash", "trailing-newline", "non-ascii", "base64-plus"],
)
def test_a_malformed_nonce_is_refused(nonce: str) -> None:
    with pytest.raises(SignatureError, match="16 to 64 characters of A-Z, a-z, 0-9"):
        check_nonce_format(nonce)


def test_new_nonces_are_well_formed_and_never_repeat() -> None:
    nonces = [new_nonce() for _ in range(1000)]

    assert len(set(nonces)) == len(nonces)
    assert all(check_nonce_format(nonce) for nonce in nonces)
