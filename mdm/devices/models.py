from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, StringConstraints
from pydantic import Field as PydanticField
from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel

from mdm.categories import Category, NetworkAccess, Platform
from mdm.database import JsonType, UtcDateTime
from mdm.validation import MAX_OS_VERSION, Input


class DeviceState(StrEnum):
    registered = "registered"
    enrolled = "enrolled"
    exiting = "exiting"
    retired = "retired"
    in_stock = "in_stock"


# Under management: the device checks in, takes commands and has a desired state for the reconciler.
MANAGED_STATES = (DeviceState.enrolled.value, DeviceState.exiting.value)


class Protocol(StrEnum):
    """How a device talks to the service: the reference agent's signed JSON, or Apple's MDM protocol."""

    agent = "agent"
    apple = "apple"


class ComplianceStatus(StrEnum):
    compliant = "compliant"
    non_compliant = "non_compliant"
    unknown = "unknown"


class Device(SQLModel, table=True):
    __tablename__ = "device"
    __table_args__ = (
        Index("ix_device_state_category", "state", "category"),
        Index("ix_device_person", "person_id"),
        Index("ix_device_compliance", "compliance_status"),
    )

    id: str = Field(primary_key=True, max_length=36)
    # NULL for devices that hide their serial (many personal Android devices); unique when known.
    serial: str | None = Field(default=None, max_length=100, unique=True)
    platform: str = Field(max_length=20)
    protocol: str = Field(default=Protocol.agent.value, max_length=10)
    model: str | None = Field(default=None, max_length=200)
    name: str | None = Field(default=None, max_length=200)
    os_version: str | None = Field(default=None, max_length=MAX_OS_VERSION)
    category: str = Field(foreign_key="access_policy.category", max_length=30)
    state: str = Field(max_length=20)
    # A flag, not a state: a held device (confiscated, legal hold) is never wiped automatically.
    held: bool = False
    held_reason: str | None = Field(default=None, max_length=2000)
    asset_tag: str | None = Field(default=None, max_length=100)
    person_id: str | None = Field(default=None, foreign_key="person.id", max_length=36)
    enrolled_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # When the user accepted the acceptable use policy at enrolment (personal devices must).
    aup_accepted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    last_checkin_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # The latest compliance verdict; the compliance domain writes it through devices.service.
    compliance_status: str = Field(default=ComplianceStatus.unknown.value, max_length=20)
    compliance_failures: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JsonType, nullable=False))
    compliance_evaluated_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    compliance_failing_since: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # Set while the device is quarantined for staying non-compliant: its network access is then none.
    quarantined_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)


# Serials are compared upper-case: a technician's typing and the device's own report must match.
Serial = Annotated[
    str,
    StringConstraints(strip_whitespace=True, to_upper=True, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9-]+$"),
]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class DeviceRegister(Input):
    """Pre-registration of a school-owned device by serial, before it is enrolled."""

    serial: Serial
    platform: Platform
    category: Category = Category.school_single_user
    model: ShortText | None = None
    asset_tag: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)] | None = None
    person_id: str | None = PydanticField(None, max_length=36)


class ComplianceSummary(BaseModel):
    status: ComplianceStatus
    failures: list[dict[str, Any]]
    evaluated_at: datetime | None
    failing_since: datetime | None = None
    quarantined_at: datetime | None = None


class DevicePublic(BaseModel):
    id: str
    serial: str | None
    platform: Platform
    protocol: Protocol
    model: str | None
    name: str | None
    os_version: str | None
    category: Category
    state: DeviceState
    held: bool
    held_reason: str | None
    asset_tag: str | None
    person_id: str | None
    network_access: NetworkAccess
    enrolled_at: datetime | None
    last_checkin_at: datetime | None
    compliance: ComplianceSummary
    created_at: datetime
    updated_at: datetime


class DeviceCertificate(SQLModel, table=True):
    """An identity certificate issued to a device; the device channel trusts only its latest live one."""

    __tablename__ = "device_certificate"

    # Hex: certificate serials are up to 159 bits, beyond any integer column.
    serial_number: str = Field(primary_key=True, max_length=40)
    device_id: str = Field(foreign_key="device.id", index=True, max_length=36)
    certificate_pem: str = Field(sa_type=Text)
    fingerprint_sha256: str = Field(max_length=64)
    issued_at: datetime = Field(sa_type=UtcDateTime)
    not_after: datetime = Field(sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime, index=True)
    revocation_reason: str | None = Field(default=None, max_length=500)


@dataclass(frozen=True, slots=True)
class Identity:
    """A device certificate as the device channel reads it: plain values, not an ORM entity.

    Every check-in and every Apple connect reads its device's identities; loading them as entities
    (identity map, change tracking, the PEM as a tracked attribute) cost more than the query.
    """

    serial_number: str
    device_id: str
    certificate_pem: str
    fingerprint_sha256: str
    issued_at: datetime
    not_after: datetime
    revoked_at: datetime | None


class HoldChange(Input):
    held: bool
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] | None = PydanticField(
        None, description="Why the device is held (required when holding): e.g. confiscated, legal hold."
    )


class PkiState(SQLModel, table=True):
    """One row: the number of the newest CRL, which must only ever grow."""

    __tablename__ = "pki_state"

    id: int = Field(primary_key=True)
    crl_number: int = 0
    crl_updated_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
