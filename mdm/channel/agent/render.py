"""Intents into the agent's JSON commands (shared/API.md, "Command types"), at the moment of delivery."""

from sqlmodel import Session

from mdm.channel import service as channel
from mdm.channel.agent.models import DeviceCommandForDevice
from mdm.commands.intents import InstallProfile, Intent
from mdm.commands.models import Command
from mdm.hooks import hooks_of

STALE_PROFILE = "superseded: the profile changed before the device collected this version"


def rendered(session: Session, due: list[tuple[Command, Intent]]) -> list[DeviceCommandForDevice]:
    """The due commands as the agent receives them; one whose profile moved on is withdrawn, not sent."""
    delivered = []
    for command, intent in due:
        payload = _payload(session, intent)
        if payload is None:
            channel.withdraw(session, command, STALE_PROFILE)
            continue
        delivered.append(DeviceCommandForDevice(id=command.id, type=command.type, payload=payload))  # type: ignore[arg-type]
    return delivered


def _payload(session: Session, intent: Intent) -> dict[str, object] | None:
    if isinstance(intent, InstallProfile):
        # {identifier, version, profile}: the payloads with their secrets, opened only for this device.
        return hooks_of(session).profiles.agent_payload(session, intent.identifier, intent.version)
    return intent.payload()
