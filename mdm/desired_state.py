"""The seam between the core and the reconciler.

The core knows when a device's desired state may have moved (an enrolment, a changed inventory, a
changed access policy or person) but not what that state is: that is the profiles domain's
reconciler. The composition root registers it here; the core only says which devices changed.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlmodel import Session


@dataclass(frozen=True)
class DeviceSelector:
    """Which devices to reconcile: the union of everything named. `everyone` means all managed devices."""

    device_ids: frozenset[str] = field(default_factory=frozenset)
    categories: frozenset[str] = field(default_factory=frozenset)
    person_ids: frozenset[str] = field(default_factory=frozenset)
    everyone: bool = False

    def is_empty(self) -> bool:
        return not (self.everyone or self.device_ids or self.categories or self.person_ids)


Reconcile = Callable[[Session, DeviceSelector], None]
_reconcilers: list[Reconcile] = []


def register(reconcile: Reconcile) -> None:
    _reconcilers.clear()  # one reconciler per process: the latest app wired wins (tests build many)
    _reconcilers.append(reconcile)


def devices_changed(
    session: Session,
    *,
    device_ids: Iterable[str] = (),
    categories: Iterable[str] = (),
    person_ids: Iterable[str] = (),
    everyone: bool = False,
) -> None:
    selector = DeviceSelector(frozenset(device_ids), frozenset(categories), frozenset(person_ids), everyone)
    if selector.is_empty():
        return
    for reconcile in _reconcilers:
        reconcile(session, selector)
