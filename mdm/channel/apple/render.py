"""Intents into Apple's MDM commands, at the moment of delivery (the command schemas in Apple's
device-management repository are the reference, and tests validate every command against them).

The command's id is its CommandUUID, so the device's answer names the row it answers. A command that
cannot be rendered for Apple (a profile that moved on, an app with no App Store id or manifest) is not
sent: `Unrenderable` says why, and the caller withdraws it with that reason.
"""

from typing import Any

from sqlmodel import Session

from mdm.channel.apple.queries import QUERIES, query_command
from mdm.commands.intents import (
    DeviceLock,
    EraseDevice,
    InstallApplication,
    InstallProfile,
    Intent,
    QueryInventory,
    RemoveApplication,
    RemoveMDM,
    RemoveProfile,
)
from mdm.commands.models import Command
from mdm.hooks import APPLE_ENROLMENT_PROFILE_IDENTIFIER, hooks_of

# The enrolment profile's PayloadIdentifier (the profile with the SCEP and MDM payloads). Removing it is
# how Apple documents an MDM server letting a device go: the device removes it, and with it every
# managed app and profile, then sends CheckOut. The enrolment profile must carry this same identifier.
ENROLMENT_PROFILE_IDENTIFIER = APPLE_ENROLMENT_PROFILE_IDENTIFIER
# Managed apps go when the MDM profile goes (a leaver keeps the family's apps, never the school's).
REMOVE_APP_WITH_MDM = 1

STALE_PROFILE = "superseded: the profile changed before the device collected this version"


class Unrenderable(Exception):
    """The intent has no Apple command today; `reason` goes into the withdrawn command's history."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def command_plist(session: Session, command: Command, intent: Intent) -> dict[str, Any]:
    """What the device receives: {CommandUUID, Command: {RequestType, ...}}."""
    return {"CommandUUID": command.id, "Command": render(session, intent)}


def render(session: Session, intent: Intent) -> dict[str, Any]:
    if isinstance(intent, InstallProfile):
        payload = hooks_of(session).profiles.apple_mobileconfig(session, intent.identifier, intent.version)
        if payload is None:
            raise Unrenderable(STALE_PROFILE)
        return {"RequestType": "InstallProfile", "Payload": payload}
    if isinstance(intent, RemoveProfile):
        return {"RequestType": "RemoveProfile", "Identifier": intent.identifier}
    if isinstance(intent, InstallApplication):
        return _install_application(session, intent)
    if isinstance(intent, RemoveApplication):
        return {"RequestType": "RemoveApplication", "Identifier": intent.identifier}
    if isinstance(intent, DeviceLock):
        return {"RequestType": "DeviceLock", **({"Message": intent.message} if intent.message else {})}
    if isinstance(intent, EraseDevice):
        return {"RequestType": "EraseDevice"}
    if isinstance(intent, RemoveMDM):
        return {"RequestType": "RemoveProfile", "Identifier": ENROLMENT_PROFILE_IDENTIFIER}
    if isinstance(intent, QueryInventory) and intent.query in QUERIES:
        return query_command(intent.query)
    raise Unrenderable(f"{type(intent).__name__} {intent.payload()} has no Apple command")


def _install_application(session: Session, intent: InstallApplication) -> dict[str, Any]:
    source = hooks_of(session).profiles.apple_app(session, intent.identifier)
    if source is None:
        raise Unrenderable(f"{intent.identifier} is no longer in the app catalogue")
    command: dict[str, Any] = {"RequestType": "InstallApplication", "ManagementFlags": REMOVE_APP_WITH_MDM}
    if source.itunes_store_id is not None:
        command["iTunesStoreID"] = source.itunes_store_id
    elif source.manifest_url is not None:
        command["ManifestURL"] = source.manifest_url
    else:
        raise Unrenderable(
            f"Apple devices cannot install {intent.identifier}: give the app its itunes_store_id (App Store) "
            "or manifest_url (in-house) in the catalogue"
        )
    return command
