"""Profile rendering: signed .mobileconfig checked by the real openssl, keys by Apple's schema, agent JSON.

No database: rendering is plain functions over typed payloads, a CA and a signer in a temporary directory.
"""

from __future__ import annotations

import plistlib
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from pydantic import TypeAdapter

from enrollment.ca import CertificateAuthority, ProfileSigner, load_or_create_ca, load_or_create_profile_signer
from profiles.payloads import Payload, WifiPayload
from profiles.render import (
    MOBILECONFIG_MEDIA_TYPE,
    agent_profile,
    apple_payloads,
    configuration_profile,
    payload_uuid,
    plist_bytes,
    profile_uuid,
    sign_profile,
)
from tests.apple_schema import require_fixtures, validate_payload, validate_profile

IDENTIFIER = "uk.sch.example.learners"
PSK = "correct horse battery staple"
PAYLOAD = TypeAdapter(Payload)

EVERY_TYPE = [
    {"type": "wifi", "ssid": "School", "security": "wpa2_enterprise"},
    {"type": "proxy", "pac_url": "https://filter.example.sch.uk/proxy.pac", "allow_direct_if_pac_unreachable": True},
    {"type": "web_filter", "allowed_urls": ["https://bbc.co.uk/bitesize"], "denied_urls": ["https://example.com"]},
    {"type": "passcode", "min_length": 6, "max_failed_attempts": 10, "auto_lock_minutes": 5},
    {"type": "restrictions", "allow_camera": False, "allow_screenshots": False, "allow_app_installs": False},
]
PSK_WIFI = [{"type": "wifi", "ssid": "Staff", "security": "wpa3_psk", "password": PSK, "hidden": True}]
ENTERPRISE_WIFI = [{"type": "wifi", "ssid": "Eduroam-ish", "security": "wpa3_enterprise", "auto_join": False}]
MANUAL_PROXY = [{"type": "proxy", "host": "proxy.example.sch.uk", "port": 3128}]
CASES = {
    "every_type": EVERY_TYPE,
    "psk_wifi": PSK_WIFI,
    "enterprise_wifi": ENTERPRISE_WIFI,
    "manual_proxy": MANUAL_PROXY,
}


def typed(raw: list[dict]) -> list[Payload]:
    return [PAYLOAD.validate_python(item) for item in raw]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, ProfileSigner, Path]:
    data_dir = tmp_path_factory.mktemp("data")
    ca = load_or_create_ca(data_dir, None)
    signer = load_or_create_profile_signer(data_dir, ca)
    ca_pem = data_dir / "ca.pem"
    ca_pem.write_text(ca.certificate_pem)
    return ca, signer, ca_pem


def openssl_verify(signed: Path, ca_pem: Path, out: Path) -> subprocess.CompletedProcess[str]:
    command = ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-CAfile", ca_pem, "-in", signed, "-out", out]
    return subprocess.run(list(map(str, command)), capture_output=True, text=True, check=False, timeout=60)


# --- (a) and (d): the signature, as openssl sees it ----------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_openssl_verifies_the_signed_profile_and_returns_the_exact_plist(case: str, pki, tmp_path: Path) -> None:
    ca, signer, ca_pem = pki
    profile = configuration_profile(IDENTIFIER, "Learners", 3, typed(CASES[case]), ca.certificate_pem)
    data = plist_bytes(profile)
    signed = tmp_path / "signed.der"
    signed.write_bytes(sign_profile(data, signer, ca.certificate_pem))

    result = openssl_verify(signed, ca_pem, tmp_path / "out.plist")

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.plist").read_bytes() == data
    assert plistlib.loads(data) == profile


def test_a_tampered_signed_profile_fails_verification(pki, tmp_path: Path) -> None:
    ca, signer, ca_pem = pki
    data = plist_bytes(configuration_profile(IDENTIFIER, "Learners", 1, typed(PSK_WIFI), ca.certificate_pem))
    signed = bytearray(sign_profile(data, signer, ca.certificate_pem))
    # Change the SSID inside the attached content: same length, so the DER structure still parses and
    # only the signature check can catch it.
    at = signed.index(b"<string>Staff</string>")
    signed[at + len("<string>") : at + len("<string>Staff")] = b"Stuff"
    path = tmp_path / "tampered.der"
    path.write_bytes(bytes(signed))

    result = openssl_verify(path, ca_pem, tmp_path / "out.plist")

    assert result.returncode != 0
    assert "Verification failure" in result.stderr or "digest failure" in result.stderr


def test_a_profile_signed_under_another_ca_is_refused(pki, tmp_path: Path) -> None:
    ca, _signer, ca_pem = pki
    other_ca = load_or_create_ca(tmp_path / "other", None)
    other_signer = load_or_create_profile_signer(tmp_path / "other", other_ca)
    data = plist_bytes(configuration_profile(IDENTIFIER, "Learners", 1, typed(EVERY_TYPE), ca.certificate_pem))
    path = tmp_path / "foreign.der"
    path.write_bytes(sign_profile(data, other_signer, other_ca.certificate_pem))

    assert openssl_verify(path, ca_pem, tmp_path / "out.plist").returncode != 0


def test_plist_bytes_are_deterministic(pki) -> None:
    ca, _signer, _ca_pem = pki
    first = plist_bytes(configuration_profile(IDENTIFIER, "Learners", 2, typed(EVERY_TYPE), ca.certificate_pem))
    again = plist_bytes(configuration_profile(IDENTIFIER, "Learners", 2, typed(EVERY_TYPE), ca.certificate_pem))
    assert first == again
    assert first.startswith(b"<?xml")


def test_media_type() -> None:
    assert MOBILECONFIG_MEDIA_TYPE == "application/x-apple-aspen-config"


# --- (b): Apple's schema --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_profile_and_every_payload_match_apples_schema(case: str, pki) -> None:
    require_fixtures()
    ca, _signer, _ca_pem = pki
    profile = configuration_profile(IDENTIFIER, "Learners", 1, typed(CASES[case]), ca.certificate_pem)
    # Round-trip through the plist so the check sees exactly the types a device would read.
    profile = plistlib.loads(plist_bytes(profile))

    assert validate_profile(profile) == []
    for payload in profile["PayloadContent"]:
        assert validate_payload(payload) == [], payload["PayloadType"]


# --- What each payload says -----------------------------------------------------------------------


def test_every_type_maps_to_its_apple_payload(pki) -> None:
    ca, _signer, _ca_pem = pki
    rendered = apple_payloads(IDENTIFIER, typed(EVERY_TYPE), ca.certificate_pem)
    by_type = {payload["PayloadType"]: payload for payload in rendered}

    assert [payload["PayloadType"] for payload in rendered] == [
        "com.apple.security.root",
        "com.apple.wifi.managed",
        "com.apple.proxy.http.global",
        "com.apple.webcontent-filter",
        "com.apple.mobiledevice.passwordpolicy",
        "com.apple.applicationaccess",
    ]
    proxy = by_type["com.apple.proxy.http.global"]
    assert proxy["ProxyType"] == "Auto"
    assert proxy["ProxyPACURL"] == "https://filter.example.sch.uk/proxy.pac"
    assert proxy["ProxyPACFallbackAllowed"] is True
    assert "ProxyServer" not in proxy
    web_filter = by_type["com.apple.webcontent-filter"]
    assert web_filter["FilterType"] == "BuiltIn"
    assert web_filter["AutoFilterEnabled"] is True
    assert web_filter["PermittedURLs"] == ["https://bbc.co.uk/bitesize"]
    assert web_filter["DenyListURLs"] == ["https://example.com"]
    assert "BlacklistedURLs" not in web_filter
    passcode = by_type["com.apple.mobiledevice.passwordpolicy"]
    assert (passcode["forcePIN"], passcode["minLength"], passcode["maxFailedAttempts"]) == (True, 6, 10)
    assert (passcode["maxInactivity"], passcode["requireAlphanumeric"]) == (5, False)
    restrictions = by_type["com.apple.applicationaccess"]
    assert restrictions["allowCamera"] is False
    assert restrictions["allowScreenShot"] is False
    assert restrictions["allowAppInstallation"] is False
    assert restrictions["allowExplicitContent"] is False


def test_common_keys_and_identifiers_are_unique(pki) -> None:
    ca, _signer, _ca_pem = pki
    rendered = apple_payloads(IDENTIFIER, typed(EVERY_TYPE + PSK_WIFI), ca.certificate_pem)

    for payload in rendered:
        assert payload["PayloadVersion"] == 1
        assert payload["PayloadIdentifier"].startswith(f"{IDENTIFIER}.{payload['PayloadType']}.")
        assert payload["PayloadDisplayName"]
    assert len({payload["PayloadIdentifier"] for payload in rendered}) == len(rendered)
    assert len({payload["PayloadUUID"] for payload in rendered}) == len(rendered)
    assert rendered[-1]["PayloadIdentifier"] == f"{IDENTIFIER}.com.apple.wifi.managed.5"


def test_psk_wifi_carries_the_password_and_no_certificate(pki) -> None:
    ca, _signer, _ca_pem = pki
    [wifi] = apple_payloads(IDENTIFIER, typed(PSK_WIFI), ca.certificate_pem)

    assert wifi["SSID_STR"] == "Staff"
    assert wifi["EncryptionType"] == "WPA3"
    assert wifi["Password"] == PSK
    assert wifi["HIDDEN_NETWORK"] is True
    assert wifi["AutoJoin"] is True
    assert "EAPClientConfiguration" not in wifi


def test_enterprise_wifi_uses_eap_tls_and_trusts_the_school_ca(pki) -> None:
    ca, _signer, _ca_pem = pki
    root, wifi = apple_payloads(IDENTIFIER, typed(ENTERPRISE_WIFI), ca.certificate_pem)

    assert wifi["EncryptionType"] == "WPA3"
    assert wifi["AutoJoin"] is False
    assert "Password" not in wifi
    assert wifi["EAPClientConfiguration"] == {
        "AcceptEAPTypes": [13],
        "PayloadCertificateAnchorUUID": [root["PayloadUUID"]],
    }
    assert root["PayloadType"] == "com.apple.security.root"
    assert root["PayloadContent"] == ca.certificate.public_bytes(Encoding.DER)


def test_wpa2_maps_to_wpa2(pki) -> None:
    ca, _signer, _ca_pem = pki
    [wifi] = apple_payloads(IDENTIFIER, typed([{**PSK_WIFI[0], "security": "wpa2_psk"}]), ca.certificate_pem)
    assert wifi["EncryptionType"] == "WPA2"


def test_manual_proxy(pki) -> None:
    ca, _signer, _ca_pem = pki
    [proxy] = apple_payloads(IDENTIFIER, typed(MANUAL_PROXY), ca.certificate_pem)
    assert (proxy["ProxyType"], proxy["ProxyServer"], proxy["ProxyServerPort"]) == (
        "Manual",
        "proxy.example.sch.uk",
        3128,
    )
    assert "ProxyPACURL" not in proxy


def test_top_level_profile(pki) -> None:
    ca, _signer, _ca_pem = pki
    profile = configuration_profile(IDENTIFIER, "Learners", 7, typed(PSK_WIFI), ca.certificate_pem, "Example Academy")

    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadVersion"] == 1
    assert profile["PayloadIdentifier"] == IDENTIFIER
    assert profile["PayloadUUID"] == profile_uuid(IDENTIFIER)
    assert profile["PayloadDisplayName"] == "Learners"
    assert "version 7" in profile["PayloadDescription"]
    assert profile["PayloadOrganization"] == "Example Academy"
    assert profile["PayloadRemovalDisallowed"] is False
    assert len(profile["PayloadContent"]) == 1


# --- (c): UUIDs -----------------------------------------------------------------------------------


def test_uuids_are_stable_across_versions_and_differ_between_profiles(pki) -> None:
    ca, _signer, _ca_pem = pki
    version_1 = configuration_profile(IDENTIFIER, "Learners", 1, typed(EVERY_TYPE), ca.certificate_pem)
    version_2 = configuration_profile(IDENTIFIER, "Learners (new name)", 2, typed(EVERY_TYPE), ca.certificate_pem)
    other = configuration_profile("uk.sch.example.staff", "Staff", 1, typed(EVERY_TYPE), ca.certificate_pem)

    def uuids(profile: dict) -> list[str]:
        return [profile["PayloadUUID"]] + [payload["PayloadUUID"] for payload in profile["PayloadContent"]]

    assert uuids(version_1) == uuids(version_2)
    assert not set(uuids(version_1)) & set(uuids(other))


def test_uuid_shape_and_inputs() -> None:
    value = payload_uuid(IDENTIFIER, 0, "com.apple.wifi.managed")
    assert value == value.upper()
    assert str(uuid.UUID(value)).upper() == value
    assert profile_uuid(IDENTIFIER) == profile_uuid(IDENTIFIER)
    assert profile_uuid(IDENTIFIER) != profile_uuid("uk.sch.example.staff")
    assert value != payload_uuid(IDENTIFIER, 1, "com.apple.wifi.managed")
    assert value != payload_uuid(IDENTIFIER, 0, "com.apple.security.root")
    assert profile_uuid(IDENTIFIER) not in {value, payload_uuid(IDENTIFIER, 0, "")}


# --- (e): the agent's JSON and where the PSK may appear -------------------------------------------


def test_agent_json_reveals_the_psk_only_there() -> None:
    payloads = typed([*PSK_WIFI, {"type": "passcode"}])
    wifi = payloads[0]
    assert isinstance(wifi, WifiPayload)

    command = agent_profile(IDENTIFIER, 4, payloads)

    assert command["identifier"] == IDENTIFIER
    assert command["version"] == 4
    assert command["profile"][0] == {
        "type": "wifi",
        "ssid": "Staff",
        "security": "wpa3_psk",
        "password": PSK,
        "hidden": True,
        "auto_join": True,
    }
    assert command["profile"][1]["type"] == "passcode"
    assert PSK not in repr(wifi)
    assert PSK not in str(wifi.model_dump())
    assert PSK not in wifi.model_dump_json()
    # Rendering must not have unmasked the model itself.
    assert wifi.model_dump(mode="json")["password"] == "**********"
    assert PSK not in repr(payloads)


def test_enterprise_wifi_agent_json_has_no_password() -> None:
    command = agent_profile(IDENTIFIER, 1, typed(ENTERPRISE_WIFI))
    assert command["profile"][0]["password"] is None
    assert command["profile"][0]["security"] == "wpa3_enterprise"
