"""Command intents: what a command asks of a device, in no protocol's words.

A command row stores its intent (`InstallProfile {identifier, version}`, ...), never a wire format: the
device's protocol adapter renders it when the command is delivered (the agent's JSON, Apple's plist),
so the same queue serves every protocol and a profile's secrets are opened only for the device, at the
moment it collects them. Rows queued before intents carried more keys (the agent's rendered profile);
reading them keeps only the intent, which is all an adapter needs.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict

from mdm.commands.models import Command, CommandType


class Intent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    @classmethod
    def command_type(cls) -> CommandType:
        return CommandType(cls.__name__)

    def payload(self) -> dict[str, Any]:
        """What the command row stores (and the history shows)."""
        return self.model_dump(exclude_none=True)


class InstallProfile(Intent):
    identifier: str
    version: int


class RemoveProfile(Intent):
    identifier: str


class InstallApplication(Intent):
    identifier: str
    version: str | None = None  # the minimum the school requires, where it sets one


class RemoveApplication(Intent):
    identifier: str


class DeviceLock(Intent):
    message: str | None = None


class EraseDevice(Intent):
    pass


class RemoveMDM(Intent):
    pass


class QueryInventory(Intent):
    query: str  # the protocol's name for one piece of inventory (Apple: DeviceInformation, SecurityInfo, ...)


INTENTS: dict[CommandType, type[Intent]] = {
    CommandType.InstallProfile: InstallProfile,
    CommandType.RemoveProfile: RemoveProfile,
    CommandType.InstallApplication: InstallApplication,
    CommandType.RemoveApplication: RemoveApplication,
    CommandType.DeviceLock: DeviceLock,
    CommandType.EraseDevice: EraseDevice,
    CommandType.RemoveMDM: RemoveMDM,
    CommandType.QueryInventory: QueryInventory,
}


def intent_of(command: Command) -> Intent:
    return INTENTS[CommandType(command.type)].model_validate(command.payload)
