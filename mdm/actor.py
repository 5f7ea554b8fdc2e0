"""Who is acting: recorded on every audit event and checked against each route's roles."""

import getpass
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    admin = "admin"
    technician = "technician"
    auditor = "auditor"
    integration = "integration"


@dataclass(frozen=True)
class Actor:
    kind: str  # "token", "cli", "device" or "system"
    id: str
    name: str
    role: Role | None = None
    request_id: str | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"


def cli_actor() -> Actor:
    """CLI writes are attributed to the operating-system account that ran them."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(kind="cli", id=user, name=user, role=Role.admin)


SYSTEM = Actor(kind="system", id="system", name="scheduler")
