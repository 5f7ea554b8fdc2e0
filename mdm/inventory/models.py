from datetime import datetime
from typing import Annotated, Any

from pydantic import Field as PydanticField
from pydantic import StringConstraints
from sqlalchemy import Column
from sqlmodel import Field, SQLModel

from mdm.database import JsonType, UtcDateTime
from mdm.validation import MAX_INT32, Reported, UtcTime


class DeviceInventory(SQLModel, table=True):
    """The latest inventory a device reported, whole, with a hash to skip unchanged check-ins cheaply."""

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
    os_version: Version | None = None
    build: Version | None = None
    passcode_set: bool | None = None
    passcode_length: int | None = PydanticField(None, ge=0, le=256)
    encrypted: bool | None = None
    jailbroken: bool | None = None
    malware_protection: MalwareProtection | None = None
    apps: list[ReportedApp] = PydanticField(default_factory=list, max_length=5000)
    profiles: list[ReportedProfile] = PydanticField(default_factory=list, max_length=1000)
