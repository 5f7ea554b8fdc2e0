from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, StringConstraints, model_validator
from pydantic import Field as PydanticField
from sqlalchemy import BigInteger, Column, Index
from sqlmodel import Field, SQLModel

from mdm.categories import Category, NetworkAccess, Platform
from mdm.database import JsonType, UtcDateTime
from mdm.validation import Input, not_null
from profiles.payloads import NETWORK_PAYLOAD_TYPES, Payload

# --- Tables ----------------------------------------------------------------------------------------


class Profile(SQLModel, table=True):
    __tablename__ = "profile"

    id: str = Field(primary_key=True, max_length=36)
    identifier: str = Field(max_length=255, unique=True)
    name: str = Field(max_length=200)
    version: int = 1
    # Payload JSON as validated, with any Wi-Fi password sealed (see service._seal_payloads).
    payloads: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JsonType, nullable=False))
    is_network: bool = False
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)
    deleted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class ScopeRule(SQLModel, table=True):
    """One scope condition of a profile or app requirement: rows, so scopes resolve with joins."""

    __tablename__ = "scope_rule"
    __table_args__ = (Index("ix_scope_rule_owner", "owner_id", "kind"),)

    owner_id: str = Field(primary_key=True, max_length=36)  # a profile or an app
    kind: str = Field(primary_key=True, max_length=20)  # category, group, network
    value: str = Field(primary_key=True, max_length=100)


class App(SQLModel, table=True):
    __tablename__ = "app"

    id: str = Field(primary_key=True, max_length=36)
    identifier: str = Field(max_length=255)
    name: str = Field(max_length=200)
    platform: str = Field(max_length=20)
    licence: str = Field(max_length=10)  # school (a counted pool) or free
    licences_total: int = 0
    min_version: str | None = Field(default=None, max_length=50)
    age_rating: int | None = None
    # Where an Apple device installs it from: the App Store, or an in-house app's manifest.
    itunes_store_id: int | None = Field(default=None, sa_type=BigInteger)
    manifest_url: str | None = Field(default=None, max_length=2000)
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)
    deleted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class SchoolInstall(SQLModel, table=True):
    """The service's own record of a school app on a device: the licence held and the proof the school put it there.

    reserved: an install is queued (the licence is taken); installed: the device acknowledged it.
    The row goes when the install fails, the app is removed, or the device leaves: the licence returns.
    """

    __tablename__ = "school_install"
    __table_args__ = (Index("ix_school_install_app", "app_id"),)

    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=36)
    app_id: str = Field(foreign_key="app.id", primary_key=True, max_length=36)
    status: str = Field(max_length=20)
    command_id: str | None = Field(default=None, max_length=36)
    reserved_at: datetime = Field(sa_type=UtcDateTime)
    installed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


# --- API schemas -----------------------------------------------------------------------------------

Identifier = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=3, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
GroupName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class Scope(Input):
    categories: list[Category] = PydanticField(default_factory=list, description="Empty: every category.")
    groups: list[GroupName] = PydanticField(default_factory=list, description="Empty: every person, or none.")
    network_access: list[Literal["full", "internet_only"]] = PydanticField(
        default_factory=list,
        description="For profiles with Wi-Fi payloads: the network access a device must have. "
        "Empty: any access but none (a quarantined device loses network profiles).",
    )


class ProfileCreate(Input):
    name: Name
    identifier: Identifier
    payloads: list[Payload] = PydanticField(min_length=1, max_length=20)
    scope: Scope = PydanticField(default_factory=Scope)

    @model_validator(mode="after")
    def _network_scope_needs_network_payloads(self) -> "ProfileCreate":
        if self.scope.network_access and not any(p.type in NETWORK_PAYLOAD_TYPES for p in self.payloads):
            raise ValueError("scope.network_access applies only to profiles with wifi payloads")
        return self


class ProfileUpdate(Input):
    name: Name | None = None
    payloads: list[Payload] | None = PydanticField(None, min_length=1, max_length=20)
    scope: Scope | None = None

    _not_null = not_null("name", "payloads", "scope")


class ProfilePublic(BaseModel):
    id: str
    name: str
    identifier: str
    version: int
    payloads: list[dict[str, Any]] = PydanticField(description="Wi-Fi passwords are never returned.")
    scope: Scope
    created_at: datetime
    updated_at: datetime


class LicenceKind(StrEnum):
    school = "school"
    free = "free"


ItunesStoreId = Annotated[
    int, PydanticField(ge=1, le=2**53, description="The app's App Store id, for Apple devices to install it.")
]
ManifestUrl = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=2000, pattern=r"^https://[^\s]+$"),
    PydanticField(description="An in-house app's manifest (https), for Apple devices to install it."),
]


class AppCreate(Input):
    identifier: Identifier
    name: Name
    platform: Platform
    licence: LicenceKind
    licences_total: int | None = PydanticField(None, ge=0, le=1_000_000)
    min_version: Annotated[str, StringConstraints(strip_whitespace=True, max_length=50)] | None = None
    required_for: list[Category] = PydanticField(default_factory=list, description="Categories that must have it.")
    required_groups: list[GroupName] = PydanticField(
        default_factory=list, description="Narrows required_for to people in these groups."
    )
    age_rating: int | None = PydanticField(None, ge=0, le=21)
    itunes_store_id: ItunesStoreId | None = None
    manifest_url: ManifestUrl | None = None

    @model_validator(mode="after")
    def _pool_for_school_licences(self) -> "AppCreate":
        if self.licence == LicenceKind.school and self.licences_total is None:
            raise ValueError("a school-licensed app needs licences_total (the size of its pool)")
        if self.licence == LicenceKind.free and self.licences_total:
            raise ValueError("a free app has no licence pool; leave licences_total out")
        return self


class AppUpdate(Input):
    name: Name | None = None
    licences_total: int | None = PydanticField(None, ge=0, le=1_000_000)
    min_version: Annotated[str, StringConstraints(strip_whitespace=True, max_length=50)] | None = None
    required_for: list[Category] | None = None
    required_groups: list[GroupName] | None = None
    age_rating: int | None = PydanticField(None, ge=0, le=21)
    itunes_store_id: ItunesStoreId | None = None
    manifest_url: ManifestUrl | None = None

    # min_version, age_rating and the Apple sources may be cleared with null; the rest always has a value.
    _not_null = not_null("name", "licences_total", "required_for", "required_groups")


class AppPublic(BaseModel):
    id: str
    identifier: str
    name: str
    platform: Platform
    licence: LicenceKind
    licences_total: int | None
    licences_assigned: int
    licences_short: int = PydanticField(description="Devices that need the app but got no licence.")
    min_version: str | None
    required_for: list[Category]
    required_groups: list[str]
    age_rating: int | None
    itunes_store_id: int | None = None
    manifest_url: str | None = None
    created_at: datetime
    updated_at: datetime


class DesiredItem(BaseModel):
    kind: Literal["profile", "app"]
    identifier: str
    version: str | None
    because: list[str]
    reported: str = PydanticField(description="What the device reports: installed, missing, outdated ...")
    pending_command: str | None = None


class DesiredState(BaseModel):
    device_id: str
    state: str
    network_access: NetworkAccess
    items: list[DesiredItem]
    removals: list[DesiredItem]
