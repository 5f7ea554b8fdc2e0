"""Payload storage: a profile's secrets sealed at rest, opened only to render it for a device, never returned.

A module of its own so the service (storing, showing and rendering profiles) and anything else in the
domain that needs the payloads share one copy of the sealing rules.
"""

from typing import Any

from pydantic import TypeAdapter

from mdm.sealing import Sealer
from profiles.models import Profile
from profiles.payloads import Payload
from profiles.render import agent_profile

PAYLOADS = TypeAdapter(list[Payload])


def sealed(payloads: list[Any], sealer: Sealer) -> list[dict[str, Any]]:
    """The payloads as stored: each password replaced by its sealed copy."""
    stored = []
    for payload in payloads:
        document = payload.model_dump(mode="json", exclude={"password"})
        password = getattr(payload, "password", None)
        if password is not None:
            document["password_sealed"] = sealer.seal(password.get_secret_value())
        stored.append(document)
    return stored


def _revealed(stored: list[dict[str, Any]], sealer: Sealer) -> list[dict[str, Any]]:
    revealed = []
    for document in stored:
        document = dict(document)
        sealed_password = document.pop("password_sealed", None)
        if sealed_password is not None:
            document["password"] = sealer.open(sealed_password)
        revealed.append(document)
    return revealed


def redacted(stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stored payloads without their sealed secrets, for staff to read."""
    return [{k: v for k, v in document.items() if k != "password_sealed"} for document in stored]


def typed_payloads(profile: Profile, sealer: Sealer) -> list[Any]:
    """The profile's payloads as typed models, secrets included, for rendering to a device."""
    return PAYLOADS.validate_python(_revealed(profile.payloads, sealer))


def agent_payload(profile: Profile, sealer: Sealer) -> dict[str, Any]:
    """The InstallProfile payload the agent receives, secrets included: rendered only as it is delivered."""
    return agent_profile(profile.identifier, profile.version, typed_payloads(profile, sealer))


def has_secret(profile: Profile) -> bool:
    return any("password_sealed" in document for document in profile.payloads)


def without_secret(payload: Any) -> Any:
    return payload.model_copy(update={"password": None}) if getattr(payload, "password", None) else payload
