"""The inventory tables, the report a device sends, and the typed inventory compliance reads.

A report arrives whole (the agent, every check-in) or in pieces (Apple answers one query at a time);
either way the snapshot holds the merged document. `ReportedInventory` is that document typed for the
compliance rules, built without pydantic: 100,000 devices of 60 apps each are read every night, and
what is stored was validated when it arrived.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, TypedDict

from pydantic import Field as PydanticField
from pydantic import StringConstraints
from sqlalchemy import Column
from sqlmodel import Field, SQLModel

from mdm.database import JsonType, UtcDateTime
from mdm.validation import MAX_INT32, OsVersion, Reported, UtcTime


class DeviceInventory(SQLModel, table=True):
    """The latest inventory a device reported, its pieces merged, with a hash to skip unchanged reports cheaply."""

    __tablename__ = "device_inventory"

    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=36)
    reported_at: datetime = Field(sa_type=UtcDateTime)
    content_hash: str = Field(max_length=64)
    snapshot: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JsonType, nullable=False))


class DeviceApp(SQLModel, table=True):
    __tablename__ = "device_app"

    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=36)
    identifier: str = Field(primary_key=True, max_length=255)
    version: str | None = Field(default=None, max_length=100)
    managed: bool = False


class DeviceProfile(SQLModel, table=True):
    """A profile on a device, at the version its acknowledged InstallProfile carried (Apple reports none)."""

    __tablename__ = "device_profile"

    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=36)
    identifier: str = Field(primary_key=True, max_length=255)
    version: int | None = None


Identifier = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
Version = Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)]


class ReportedApp(Reported):
    identifier: Identifier
    version: Version | None = None
    managed: bool = False


class ReportedProfile(Reported):
    identifier: Identifier
    version: int | None = PydanticField(None, ge=0, le=MAX_INT32)


class MalwareProtection(Reported):
    enabled: bool
    definitions_updated_at: UtcTime | None = None


class Inventory(Reported):
    os_version: OsVersion | None = None
    build: Version | None = None
    passcode_set: bool | None = None
    passcode_length: int | None = PydanticField(None, ge=0, le=256)
    # Whether the passcode meets what the school's passcode profile asks (Apple's PasscodeCompliant).
    passcode_compliant: bool | None = None
    encrypted: bool | None = None
    jailbroken: bool | None = None
    malware_protection: MalwareProtection | None = None
    apps: list[ReportedApp] = PydanticField(default_factory=list, max_length=5000)
    profiles: list[ReportedProfile] = PydanticField(default_factory=list, max_length=1000)


class InstalledApp(TypedDict):
    """An app on a device: the stored entry itself, typed. Six million a night are read, so none is copied."""

    identifier: str
    version: str | None
    managed: bool


@dataclass(frozen=True, slots=True)
class MalwareStatus:
    enabled: bool
    definitions_updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class ReportedInventory:
    """What a device last reported, merged from its pieces. A fact the device never reported is None."""

    os_version: str | None = None
    build: str | None = None
    passcode_set: bool | None = None
    passcode_length: int | None = None
    passcode_compliant: bool | None = None
    encrypted: bool | None = None
    jailbroken: bool | None = None
    malware_protection: MalwareStatus | None = None
    apps: Mapping[str, InstalledApp] = field(default_factory=dict)
    # Versions from the DeviceProfile rows: an acknowledged InstallProfile sets them, not the device.
    profiles: Mapping[str, int | None] = field(default_factory=dict)
