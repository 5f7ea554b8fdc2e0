"""What the core asks of the domains, carried by the database rather than kept in module globals.

The core knows when devices may need reconciling and when a device answered a command; the domains
(profiles' reconciler, licences, exit steps) know what to do about it, and profiles knows how a
profile's content reads when a device's adapter delivers it. The bootstrap (mdm/bootstrap.py)
builds one `Hooks` per process and gives it to the `Database`, whose sessions carry it in `session.info`.
A session opened any other way has none and the core refuses to go on: a forgotten hook is an error,
never a change that silently queues nothing.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlmodel import Session

SESSION_KEY = "mdm.hooks"


@dataclass(frozen=True)
class DeviceSelector:
    """Which devices to reconcile: the union of everything named. `everyone` means all managed devices."""

    device_ids: frozenset[str] = field(default_factory=frozenset)
    categories: frozenset[str] = field(default_factory=frozenset)
    person_ids: frozenset[str] = field(default_factory=frozenset)
    everyone: bool = False

    def is_empty(self) -> bool:
        return not (self.everyone or self.device_ids or self.categories or self.person_ids)


Reconcile = Callable[[Session, DeviceSelector], object]
VersionChange = tuple[str | None, str | None]  # an app's reported version (before, after)
# (device id, identifiers of its app rows, then of its profile rows, that appeared, went or changed;
# the apps only updated: still there, managed as before, each with its versions)
ReconcileReport = Callable[[Session, str, frozenset[str], frozenset[str], Mapping[str, VersionChange]], object]
# The answered mdm.commands.models.Command; not named here, since the command queue imports this module.
ResultListener = Callable[[Session, Any], None]


class ProfileRenderer(Protocol):
    """How a protocol adapter gets a profile's content at delivery (profiles.service.DeviceProfiles)."""

    def agent_payload(self, session: Session, identifier: str, version: int) -> dict[str, Any] | None:
        """The agent's InstallProfile payload, secrets included; None when the profile is no longer at `version`."""
        ...

    def apple_mobileconfig(self, session: Session, identifier: str, version: int) -> bytes | None:
        """The signed `.mobileconfig` for an Apple device, secrets included; None when no longer at `version`."""
        ...

    def apple_app(self, session: Session, identifier: str) -> "AppleAppSource | None":
        """Where an Apple device installs a catalogue app from; None when the catalogue no longer has it."""
        ...


@dataclass(frozen=True)
class AppleAppSource:
    """An app's App Store id or the URL of its manifest (in-house apps); neither means Apple cannot install it."""

    itunes_store_id: int | None
    manifest_url: str | None


# The enrolment profile's PayloadIdentifier: the enrolment domain writes it into the profile, and the
# Apple adapter removes the profile by it (RemoveMDM), so both must name the same one.
APPLE_ENROLMENT_PROFILE_IDENTIFIER = "school-mdm.enrolment"


@dataclass(frozen=True)
class AppleClaim:
    """What an Apple device says about itself in its Authenticate message (keys some devices omit are None)."""

    udid: str
    serial: str | None = None
    model: str | None = None
    product_name: str | None = None
    os_version: str | None = None
    build: str | None = None
    device_name: str | None = None


class AppleEnrolment(Protocol):
    """How the Apple adapter finishes an enrolment the SCEP server began (enrollment.service, wired by the bootstrap)."""

    def bind(self, session: Session, certificate_serial: str, claim: AppleClaim) -> str:
        """Authenticate, signed by an identity SCEP issued (serial in hex): binds it to the device; its id.

        The token behind the identity decides category and person, under the agent's rebinding rules;
        an identity already bound to another UDID, or a UDID bound to another live identity, is refused.
        """
        ...

    def complete(self, session: Session, device_id: str) -> None:
        """TokenUpdate: the device can be woken and managed; it is enrolled (audit, webhook, reconcile)."""
        ...

    def check_out(self, session: Session, device_id: str) -> None:
        """CheckOut: the MDM profile was removed on the device. A personal device leaves management
        (retired, identities revoked); a school device stays as it is and a technician is told."""
        ...


@dataclass(frozen=True)
class Hooks:
    reconcile: Reconcile
    """Brings the selected devices' commands in line with their desired state (profiles' reconciler)."""
    reconcile_report: ReconcileReport
    """Reconciles a device whose stored report changed, unless nothing its plan reads did."""
    result_listeners: tuple[ResultListener, ...]
    """Called in order, in the same transaction, with each command a device answered."""
    profiles: ProfileRenderer
    """Renders the profiles that InstallProfile intents name, when a device collects them."""
    apple_enrolment: AppleEnrolment
    """Binds the identities the SCEP server issued to the Apple devices that present them."""


class HooksMissing(RuntimeError):
    """A session the bootstrap did not open reached code that needs the domains' hooks."""


def hooks_of(session: Session) -> Hooks:
    hooks = session.info.get(SESSION_KEY)
    if not isinstance(hooks, Hooks):
        raise HooksMissing(
            "This session carries no domain hooks, so devices would not be reconciled: open it from the "
            "Database that mdm.bootstrap.bootstrap() built, not from a bare open_database()."
        )
    return hooks
