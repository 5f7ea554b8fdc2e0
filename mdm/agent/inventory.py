"""What a device has installed, and how one command from the server changes it.

The reference agent stands in for a real phone or laptop, so this module behaves the way a device does:
it installs and removes what the school manages, never touches what the family installed itself, and
answers every command with an outcome the server can act on (shared/API.md, command types).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

OutcomeStatus = Literal["acknowledged", "error", "not_now"]

# A store install without a version lands on the store's current one; "1.0" stands in for it.
DEFAULT_APP_VERSION = "1.0"
# Once one of these is acknowledged the device is no longer the school's: its agent forgets its identity.
ENDS_MANAGEMENT = frozenset({"EraseDevice", "RemoveMDM"})


@dataclass(frozen=True)
class CommandOutcome:
    """The device's answer to one command, sent back as the command's result."""

    status: OutcomeStatus
    detail: str | None = None


@dataclass
class App:
    identifier: str
    version: str
    # True only for apps MDM installed; the family's own apps stay False and are never removed by MDM.
    managed: bool

    def to_json(self) -> dict[str, Any]:
        return {"identifier": self.identifier, "version": self.version, "managed": self.managed}


@dataclass
class Profile:
    identifier: str
    version: int
    # The payloads as the server sent them in InstallProfile; kept on the device, not reported.
    payloads: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"identifier": self.identifier, "version": self.version}


class _RefusedPayload(ValueError):
    """A command's payload a device cannot act on; the message becomes the error outcome's detail."""


@dataclass
class Inventory:
    """The device's reported state (the check-in inventory) plus the device-side facts behind it."""

    os_version: str = ""
    build: str = ""
    passcode_set: bool = False
    encrypted: bool = False
    jailbroken: bool = False
    malware_protection: dict[str, Any] | None = None
    apps: list[App] = field(default_factory=list)
    profiles: list[Profile] = field(default_factory=list)
    # Device-side state: not part of the check-in, but what a person holding the device would notice.
    enrolled: bool = False
    locked: bool = False
    lock_message: str | None = None
    erased: bool = False
    # Command types the device answers `not_now` to, once each (locked screen, busy installing...),
    # so simulators and tests can make the server back off and retry.
    refuse_next: set[str] = field(default_factory=set)

    # --- What the server sees ---------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The check-in inventory, exactly the shape of shared/API.md."""
        return {
            "os_version": self.os_version,
            "build": self.build,
            "passcode_set": self.passcode_set,
            "encrypted": self.encrypted,
            "jailbroken": self.jailbroken,
            "malware_protection": self.malware_protection,
            "apps": [app.to_json() for app in self.apps],
            "profiles": [profile.to_json() for profile in self.profiles],
        }

    # --- What the device keeps on disk ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Everything, for inventory.json: the check-in fields plus payloads and device-side state."""
        data = self.to_json()
        data["profiles"] = [{**profile.to_json(), "payloads": profile.payloads} for profile in self.profiles]
        data.update(
            enrolled=self.enrolled,
            locked=self.locked,
            lock_message=self.lock_message,
            erased=self.erased,
            refuse_next=sorted(self.refuse_next),
        )
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Inventory:
        return cls(
            os_version=data.get("os_version", ""),
            build=data.get("build", ""),
            passcode_set=bool(data.get("passcode_set", False)),
            encrypted=bool(data.get("encrypted", False)),
            jailbroken=bool(data.get("jailbroken", False)),
            malware_protection=data.get("malware_protection"),
            apps=[App(a["identifier"], a["version"], bool(a["managed"])) for a in data.get("apps", [])],
            profiles=[Profile(p["identifier"], p["version"], p.get("payloads")) for p in data.get("profiles", [])],
            enrolled=bool(data.get("enrolled", False)),
            locked=bool(data.get("locked", False)),
            lock_message=data.get("lock_message"),
            erased=bool(data.get("erased", False)),
            refuse_next=set(data.get("refuse_next", [])),
        )

    # --- Lookups and what the device's user does --------------------------------------------------

    def app(self, identifier: str) -> App | None:
        return next((app for app in self.apps if app.identifier == identifier), None)

    def profile(self, identifier: str) -> Profile | None:
        return next((profile for profile in self.profiles if profile.identifier == identifier), None)

    def install_own_app(self, identifier: str, version: str) -> App:
        """The user installs an app from their own account: unmanaged, so MDM must never remove it."""
        self.remove_app(identifier)
        app = App(identifier, version, managed=False)
        self.apps.append(app)
        return app

    def remove_app(self, identifier: str) -> bool:
        """The user deletes an app (any app: it is their device). True when something was removed."""
        before = len(self.apps)
        self.apps = [app for app in self.apps if app.identifier != identifier]
        return len(self.apps) != before

    def unlock(self) -> None:
        """Someone enters the passcode after a DeviceLock."""
        self.locked = False

    # --- Commands from the server -----------------------------------------------------------------

    def apply_command(self, command: Mapping[str, Any]) -> CommandOutcome:
        """Apply one `{"id", "type", "payload"}` command as a device would, and say how it went."""
        command_type = command.get("type")
        payload = command.get("payload") or {}
        if not isinstance(command_type, str) or command_type not in _HANDLERS:
            return CommandOutcome("error", f"unsupported command {command_type!r}")
        if command_type in self.refuse_next:
            self.refuse_next.discard(command_type)
            return CommandOutcome("not_now", f"the device is busy; {command_type} can be sent again later")
        if not isinstance(payload, Mapping):
            return CommandOutcome("error", f"{command_type} payload must be a JSON object")
        try:
            detail = _HANDLERS[command_type](self, payload)
        except _RefusedPayload as refusal:
            return CommandOutcome("error", str(refusal))
        return CommandOutcome("acknowledged", detail)

    def _install_profile(self, payload: Mapping[str, Any]) -> str:
        identifier = _identifier(payload, "InstallProfile")
        version = payload.get("version")
        # bool is an int in Python; a profile version of `true` is a server bug worth refusing loudly.
        if not isinstance(version, int) or isinstance(version, bool):
            raise _RefusedPayload("InstallProfile needs an integer version")
        self.profiles = [profile for profile in self.profiles if profile.identifier != identifier]
        self.profiles.append(Profile(identifier, version, payload.get("profile")))
        return f"profile {identifier} installed at version {version}"

    def _remove_profile(self, payload: Mapping[str, Any]) -> str:
        identifier = _identifier(payload, "RemoveProfile")
        if self.profile(identifier) is None:
            # Delivery is at least once, so a repeat must succeed rather than fail the server's plan.
            return f"profile {identifier} was not installed"
        self.profiles = [profile for profile in self.profiles if profile.identifier != identifier]
        return f"profile {identifier} removed"

    def _install_application(self, payload: Mapping[str, Any]) -> str:
        identifier = _identifier(payload, "InstallApplication")
        version = payload.get("version")
        if version is not None and not isinstance(version, str):
            raise _RefusedPayload("InstallApplication version must be a string")
        existing = self.app(identifier)
        if existing is not None and not existing.managed:
            # Taking over the family's copy would let RemoveMDM delete an app they paid for later on.
            raise _RefusedPayload(
                f"app {identifier} was installed by the device's user and is not managed by MDM; "
                "the device does not hand it over to MDM"
            )
        if existing is not None:
            existing.version = version or existing.version
            return f"app {identifier} updated to version {existing.version}"
        self.apps.append(App(identifier, version or DEFAULT_APP_VERSION, managed=True))
        return f"app {identifier} installed"

    def _remove_application(self, payload: Mapping[str, Any]) -> str:
        identifier = _identifier(payload, "RemoveApplication")
        existing = self.app(identifier)
        if existing is None:
            return f"app {identifier} was not installed"
        if not existing.managed:
            raise _RefusedPayload(f"app {identifier} is not managed by MDM; the device's user installed it")
        self.remove_app(identifier)
        return f"app {identifier} removed"

    def _device_lock(self, payload: Mapping[str, Any]) -> str:
        message = payload.get("message")
        if message is not None and not isinstance(message, str):
            raise _RefusedPayload("DeviceLock message must be a string")
        self.locked = True
        self.lock_message = message
        return "device locked"

    def _erase_device(self, payload: Mapping[str, Any]) -> str:
        # The OS itself (version, build, encryption) survives a wipe; everything installed does not.
        self.apps = []
        self.profiles = []
        self.passcode_set = False
        self.locked = False
        self.lock_message = None
        self.erased = True
        self.enrolled = False
        return "device erased"

    def _remove_mdm(self, payload: Mapping[str, Any]) -> str:
        # Ending management takes back only what MDM put there: the family's own apps stay.
        removed = [app.identifier for app in self.apps if app.managed]
        self.apps = [app for app in self.apps if not app.managed]
        self.profiles = []
        self.enrolled = False
        return f"management removed; {len(removed)} managed app(s) removed"


def _identifier(payload: Mapping[str, Any], command_type: str) -> str:
    identifier = payload.get("identifier")
    if not isinstance(identifier, str) or not identifier:
        raise _RefusedPayload(f"{command_type} needs an identifier")
    return identifier


_HANDLERS: dict[str, Callable[[Inventory, Mapping[str, Any]], str]] = {
    "InstallProfile": Inventory._install_profile,
    "RemoveProfile": Inventory._remove_profile,
    "InstallApplication": Inventory._install_application,
    "RemoveApplication": Inventory._remove_application,
    "DeviceLock": Inventory._device_lock,
    "EraseDevice": Inventory._erase_device,
    "RemoveMDM": Inventory._remove_mdm,
}
