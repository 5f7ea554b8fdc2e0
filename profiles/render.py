"""Turn a profile's typed payloads into what devices install.

Two renderings of the same payloads: the JSON the reference agent receives in an InstallProfile
command, and an Apple configuration profile (an XML plist, CMS-signed) for iPads and Macs. Every Apple
key used here is checked by the tests against Apple's published schema (shared/fixtures), because a
device refuses a whole profile over one misspelt key.
"""

from __future__ import annotations

import plistlib
import uuid
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from pydantic import SecretStr

from profiles.payloads import (
    PasscodePayload,
    Payload,
    ProxyPayload,
    RestrictionsPayload,
    WebFilterPayload,
    WifiPayload,
)


class ProfileSigner(Protocol):
    """What signing needs. Enrolment's CA makes one; the caller hands it in, so profiles never import enrolment."""

    @property
    def certificate(self) -> x509.Certificate: ...

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey: ...


MOBILECONFIG_MEDIA_TYPE = "application/x-apple-aspen-config"

# Every PayloadUUID is derived from this namespace. Never change it: devices match a new version of a
# profile (and of each payload in it) to the installed one by identifier and UUID, so new UUIDs would
# make devices treat every profile as a new one.
UUID_NAMESPACE = uuid.UUID("9e5db807-af1c-4e07-9e60-bd404d3bc481")

ROOT_CERTIFICATE_TYPE = "com.apple.security.root"
EAP_TLS = 13
# Apple's EncryptionType: since iOS 16 / macOS 13 "WPA2" joins WPA2 or WPA3 networks (transition mode
# included) and "WPA3" joins WPA3 only, which is what each choice of ours means.
_ENCRYPTION_TYPES = {"wpa2": "WPA2", "wpa3": "WPA3"}

AppleDict = dict[str, Any]


# --- Stable identifiers ---------------------------------------------------------------------------


def profile_uuid(identifier: str) -> str:
    """The profile's PayloadUUID: the same for every version of the profile, so a new version replaces it."""
    # The "profile\n" prefix keeps a profile's UUID from ever equalling a payload's.
    return _stable_uuid(f"profile\n{identifier}")


def payload_uuid(identifier: str, index: int, payload_type: str) -> str:
    """A payload's PayloadUUID from the profile, the payload's position and its Apple PayloadType."""
    return _stable_uuid(f"payload\n{identifier}\n{index}\n{payload_type}")


def _stable_uuid(name: str) -> str:
    # Upper case, as uuidgen and Apple's own examples write them.
    return str(uuid.uuid5(UUID_NAMESPACE, name)).upper()


# --- Apple payloads -------------------------------------------------------------------------------


def apple_payloads(identifier: str, payloads: list[Payload], ca_certificate_pem: str) -> list[AppleDict]:
    """The Apple payload dictionaries for a profile's typed payloads, in order.

    One typed payload may give several Apple payloads (enterprise Wi-Fi brings the CA it trusts); each
    is identified by the typed payload's index and its own PayloadType, so identifiers stay unique.
    """
    rendered: list[AppleDict] = []
    for index, payload in enumerate(payloads):
        rendered.extend(_apple_payloads_for(identifier, index, payload, ca_certificate_pem))
    return rendered


def _apple_payloads_for(identifier: str, index: int, payload: Payload, ca_certificate_pem: str) -> list[AppleDict]:
    if isinstance(payload, WifiPayload):
        return _wifi(identifier, index, payload, ca_certificate_pem)
    if isinstance(payload, ProxyPayload):
        return [_proxy(identifier, index, payload)]
    if isinstance(payload, WebFilterPayload):
        return [_web_filter(identifier, index, payload)]
    if isinstance(payload, PasscodePayload):
        return [_passcode(identifier, index, payload)]
    if isinstance(payload, RestrictionsPayload):
        return [_restrictions(identifier, index, payload)]
    # A new payload type must be rendered deliberately, never dropped from a profile without a word.
    raise TypeError(f"no Apple rendering for payload type {type(payload).__name__}")


def _common(identifier: str, index: int, payload_type: str, display_name: str) -> AppleDict:
    return {
        "PayloadType": payload_type,
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{identifier}.{payload_type}.{index}",
        "PayloadUUID": payload_uuid(identifier, index, payload_type),
        "PayloadDisplayName": display_name,
    }


def _wifi(identifier: str, index: int, payload: WifiPayload, ca_certificate_pem: str) -> list[AppleDict]:
    wifi = _common(identifier, index, "com.apple.wifi.managed", f"Wi-Fi: {payload.ssid}")
    wifi |= {
        "SSID_STR": payload.ssid,
        "HIDDEN_NETWORK": payload.hidden,
        "AutoJoin": payload.auto_join,
        "EncryptionType": _ENCRYPTION_TYPES[payload.security.split("_")[0]],
    }
    if payload.password is not None:
        # The device needs the key itself; this dictionary only ever goes into a signed profile.
        wifi["Password"] = payload.password.get_secret_value()
        return [wifi]
    anchor = _root_certificate(identifier, index, ca_certificate_pem)
    wifi["EAPClientConfiguration"] = {
        # EAP-TLS: the device proves itself with its certificate, so there is no password to leak.
        "AcceptEAPTypes": [EAP_TLS],
        # Trusting only the school's CA for the RADIUS server stops the device from asking the user to
        # accept whatever certificate a rogue access point presents.
        "PayloadCertificateAnchorUUID": [anchor["PayloadUUID"]],
    }
    # The anchor comes first so the certificate is in place before the network that refers to it.
    return [anchor, wifi]


def _root_certificate(identifier: str, index: int, ca_certificate_pem: str) -> AppleDict:
    certificate = x509.load_pem_x509_certificate(ca_certificate_pem.encode("ascii"))
    root = _common(identifier, index, ROOT_CERTIFICATE_TYPE, "School certificate authority")
    root |= {
        "PayloadCertificateFileName": "school-ca.cer",
        # Apple wants the certificate as <data>: DER bytes, which plistlib writes as base64.
        "PayloadContent": certificate.public_bytes(serialization.Encoding.DER),
    }
    return root


def _proxy(identifier: str, index: int, payload: ProxyPayload) -> AppleDict:
    proxy = _common(identifier, index, "com.apple.proxy.http.global", "Web proxy")
    if payload.pac_url is not None:
        return proxy | {
            "ProxyType": "Auto",
            "ProxyPACURL": str(payload.pac_url),
            "ProxyPACFallbackAllowed": payload.allow_direct_if_pac_unreachable,
        }
    return proxy | {"ProxyType": "Manual", "ProxyServer": payload.host, "ProxyServerPort": payload.port}


def _web_filter(identifier: str, index: int, payload: WebFilterPayload) -> AppleDict:
    web_filter = _common(identifier, index, "com.apple.webcontent-filter", "Web content filter")
    web_filter |= {"FilterType": "BuiltIn", "AutoFilterEnabled": payload.filter_adult_content}
    # Empty lists are left out rather than sent as empty arrays: the profile shows only what was chosen.
    if payload.allowed_urls:
        web_filter["PermittedURLs"] = list(payload.allowed_urls)
    if payload.denied_urls:
        # DenyListURLs (iOS 14.5+) replaces BlacklistedURLs, which the schema marks deprecated.
        web_filter["DenyListURLs"] = list(payload.denied_urls)
    return web_filter


def _passcode(identifier: str, index: int, payload: PasscodePayload) -> AppleDict:
    passcode = _common(identifier, index, "com.apple.mobiledevice.passwordpolicy", "Passcode")
    return passcode | {
        "forcePIN": True,
        "minLength": payload.min_length,
        # On iOS, going past this many failures ERASES the device (macOS locks it instead).
        "maxFailedAttempts": payload.max_failed_attempts,
        "maxInactivity": payload.auto_lock_minutes,
        "requireAlphanumeric": payload.require_alphanumeric,
    }


def _restrictions(identifier: str, index: int, payload: RestrictionsPayload) -> AppleDict:
    restrictions = _common(identifier, index, "com.apple.applicationaccess", "Restrictions")
    return restrictions | {
        "allowCamera": payload.allow_camera,
        # Also stops the Classroom app from viewing the screen, which teachers may rely on.
        "allowScreenShot": payload.allow_screenshots,
        "allowAppInstallation": payload.allow_app_installs,
        "allowExplicitContent": payload.allow_explicit_content,
    }


# --- The configuration profile --------------------------------------------------------------------


def configuration_profile(
    identifier: str,
    name: str,
    version: int,
    payloads: list[Payload],
    ca_certificate_pem: str,
    organisation: str = "School",
) -> AppleDict:
    """The top-level Configuration dictionary; the same identifier and UUID for every version."""
    return {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": profile_uuid(identifier),
        "PayloadDisplayName": name,
        # Apple has no profile version key; the description is where a person on the device can see it.
        "PayloadDescription": f"{name} (version {version}), managed by {organisation}.",
        "PayloadOrganization": organisation,
        "PayloadContent": apple_payloads(identifier, payloads, ca_certificate_pem),
        "PayloadRemovalDisallowed": False,
    }


def plist_bytes(profile: AppleDict) -> bytes:
    """The profile as an XML plist; sorted keys make the same profile the same bytes every time."""
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)


def sign_profile(data: bytes, signer: ProfileSigner, ca_certificate_pem: str) -> bytes:
    """CMS SignedData (DER) with the plist attached, as Apple devices expect a signed .mobileconfig.

    Binary mode signs the bytes as they are (no MIME newline conversion), so the content a device
    extracts is byte for byte the plist we rendered. The CA certificate travels with the signer's, so
    a verifier holding only the school's root can build the chain.
    """
    ca_certificate = x509.load_pem_x509_certificate(ca_certificate_pem.encode("ascii"))
    builder = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(data)
        .add_signer(signer.certificate, signer.private_key, hashes.SHA256())
        .add_certificate(ca_certificate)
    )
    return builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])


# --- The reference agent's rendering --------------------------------------------------------------


def agent_profile(identifier: str, version: int, payloads: list[Payload]) -> dict[str, Any]:
    """The InstallProfile command payload for the reference agent: the typed payloads as JSON.

    Secrets are revealed here, and only here, because the device cannot join a PSK network without
    the key; everywhere else (API responses, logs, repr) they stay masked.
    """
    return {
        "identifier": identifier,
        "version": version,
        "profile": [_revealed_json(payload) for payload in payloads],
    }


def _revealed_json(payload: Payload) -> dict[str, Any]:
    data = payload.model_dump(mode="json")
    for name, value in payload:
        if isinstance(value, SecretStr):
            data[name] = value.get_secret_value()
    return data
