"""The seam between the core and the reconciler.

The core knows when a device's desired state may have moved (an enrolment, a changed inventory, a
changed access policy or person) but not what that state is: that is the profiles domain's
reconciler. The bootstrap hands it over with the session (mdm/hooks.py); the core only says which
devices changed.
"""

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from sqlmodel import Session

from mdm.hooks import DeviceSelector, VersionChange, hooks_of

# The reconciler and the benchmarks name the selector from here.
__all__ = ["DeviceSelector", "devices_changed", "report_changed"]


def devices_changed(
    session: Session,
    *,
    device_ids: Iterable[str] = (),
    categories: Iterable[str] = (),
    person_ids: Iterable[str] = (),
    everyone: bool = False,
) -> None:
    reconcile = hooks_of(session).reconcile  # even when nothing changed: a session without hooks is a bug
    selector = DeviceSelector(frozenset(device_ids), frozenset(categories), frozenset(person_ids), everyone)
    if not selector.is_empty():
        reconcile(session, selector)


def report_changed(
    session: Session,
    device_id: str,
    *,
    apps: Iterable[str] = (),
    profiles: Iterable[str] = (),
    app_versions: Mapping[str, VersionChange] = MappingProxyType({}),
) -> None:
    """A device's stored report changed: `apps` and `profiles`, the identifiers of the rows that did;
    `app_versions`, the apps only updated, each (version before, after).
    The reconciler decides whether that can move what the device is sent."""
    hooks_of(session).reconcile_report(session, device_id, frozenset(apps), frozenset(profiles), app_versions)
