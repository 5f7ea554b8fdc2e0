"""The enrolment profile an Apple device installs to join the school's MDM (shared/API.md, "Apple devices").

Two payloads: SCEP, which makes the device's key and fetches its identity from our SCEP server with
the enrolment token's secret as Challenge (so a token's expiry, category and `max_uses` hold for
Apple devices exactly as for the agent), and MDM, which names that identity, the check-in and
command URLs and the push topic. Every key is checked by the tests against Apple's published schemas.
A pure function of its inputs: the caller looks the token up and signs the result.
"""

import uuid
from typing import Any

from mdm.hooks import APPLE_ENROLMENT_PROFILE_IDENTIFIER

ENROLMENT_IDENTIFIER = APPLE_ENROLMENT_PROFILE_IDENTIFIER  # RemoveMDM removes the profile by this name
# PayloadUUIDs derive from this namespace and the token, so downloading a token's profile twice gives
# the same profile. Never change it.
_UUID_NAMESPACE = uuid.UUID("3f4c8e52-6a0b-4d0e-9d6b-5f7a1c2e9b10")

# Key Usage 5 = signing (1) and encryption (4), as Apple's MDM identities are made.
SCEP_KEY_USAGE = 5
SCEP_KEY_SIZE = 2048
IDENTITY_COMMON_NAME = "School MDM device identity"
# Every MDM right, bits 1 to 4096: inspect and install profiles, lock, erase, queries, settings, apps.
ACCESS_RIGHTS_ALL = 8191

AUP_NOTICE = "Installing it accepts the school's acceptable use policy for this device."


def enrolment_profile(
    token_id: str, challenge: str, topic: str, base_url: str, *, personal: bool, organisation: str = "School"
) -> dict[str, Any]:
    """The Configuration dictionary; `personal` adds the acceptable-use notice a personal device agrees to."""
    scep_uuid = _uuid(token_id, "com.apple.security.scep")
    description = f"Enrols this device in {organisation}'s device management."
    if personal:
        description = f"{description} {AUP_NOTICE}"
    return {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        # One identifier for every token: a device that installs a newer enrolment replaces the old one.
        "PayloadIdentifier": ENROLMENT_IDENTIFIER,
        "PayloadUUID": _uuid(token_id, "Configuration"),
        "PayloadDisplayName": f"{organisation} device management",
        "PayloadDescription": description,
        "PayloadOrganization": organisation,
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [
            _scep_payload(scep_uuid, challenge, base_url, organisation),
            _mdm_payload(token_id, scep_uuid, topic, base_url),
        ],
    }


def _scep_payload(scep_uuid: str, challenge: str, base_url: str, organisation: str) -> dict[str, Any]:
    return {
        "PayloadType": "com.apple.security.scep",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ENROLMENT_IDENTIFIER}.scep",
        "PayloadUUID": scep_uuid,
        "PayloadDisplayName": "Device identity",
        "PayloadContent": {
            "URL": f"{base_url}/scep",
            "Name": organisation,
            "Subject": [[["CN", IDENTITY_COMMON_NAME]]],
            "Challenge": challenge,
            "Keysize": SCEP_KEY_SIZE,
            "Key Type": "RSA",
            "Key Usage": SCEP_KEY_USAGE,
        },
    }


def _mdm_payload(token_id: str, scep_uuid: str, topic: str, base_url: str) -> dict[str, Any]:
    return {
        "PayloadType": "com.apple.mdm",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ENROLMENT_IDENTIFIER}.mdm",
        "PayloadUUID": _uuid(token_id, "com.apple.mdm"),
        "PayloadDisplayName": "Device management",
        "IdentityCertificateUUID": scep_uuid,
        "Topic": topic,
        "ServerURL": f"{base_url}/mdm/connect",
        "CheckInURL": f"{base_url}/mdm/checkin",
        # The device signs every message (Mdm-Signature), so no TLS client certificate is needed.
        "SignMessage": True,
        # Removing the profile on the device tells us (CheckOut), so the device leaves management cleanly.
        "CheckOutWhenRemoved": True,
        "AccessRights": ACCESS_RIGHTS_ALL,
    }


def _uuid(token_id: str, what: str) -> str:
    return str(uuid.uuid5(_UUID_NAMESPACE, f"{token_id}\n{what}")).upper()
