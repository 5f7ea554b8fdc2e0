from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, StringConstraints
from pydantic import Field as PydanticField
from sqlalchemy import Text
from sqlmodel import Field, SQLModel

from mdm.categories import Category, Platform
from mdm.database import UtcDateTime
from mdm.validation import Input, OsVersion


class EnrollmentToken(SQLModel, table=True):
    __tablename__ = "enrollment_token"

    id: str = Field(primary_key=True, max_length=36)
    # Looked up by hash; the sealed copy lets staff print the QR code again until the token ends.
    token_hash: str = Field(max_length=64, unique=True)
    sealed_token: str | None = Field(default=None, max_length=500)
    category: str = Field(foreign_key="access_policy.category", max_length=30)
    person_id: str | None = Field(default=None, foreign_key="person.id", max_length=36)
    max_uses: int
    uses: int = 0
    expires_at: datetime = Field(sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    note: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(sa_type=UtcDateTime)
    created_by: str = Field(max_length=250)


class AppleIdentity(SQLModel, table=True):
    """A device identity the SCEP server issued against an enrolment token, before and after a device claims it.

    Apple devices get their certificate (SCEP) before they say who they are (Authenticate): the token's
    category and person wait here, and the first Authenticate signed with this identity binds it to the
    device's UDID (`device_id`, `udid`), once, under the same rules as an agent's enrolment.
    """

    __tablename__ = "apple_identity"

    # Hex, as DeviceCertificate.serial_number: the two name the same certificate once it is bound.
    serial_number: str = Field(primary_key=True, max_length=40)
    certificate_pem: str = Field(sa_type=Text)
    token_id: str = Field(foreign_key="enrollment_token.id", index=True, max_length=36)
    issued_at: datetime = Field(sa_type=UtcDateTime)
    not_after: datetime = Field(sa_type=UtcDateTime)
    device_id: str | None = Field(default=None, foreign_key="device.id", index=True, max_length=36)
    udid: str | None = Field(default=None, max_length=100)
    bound_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class EnrollmentTokenCreate(Input):
    category: Category
    person_id: str | None = PydanticField(None, max_length=36)
    expires_in_hours: int = PydanticField(72, ge=1, le=24 * 365)
    max_uses: int = PydanticField(1, ge=1, le=100_000, description="More than 1 for a cart of school stock.")
    note: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = None


class EnrollmentTokenPublic(BaseModel):
    id: str
    category: Category
    person_id: str | None
    max_uses: int
    uses: int
    expires_at: datetime
    revoked_at: datetime | None
    note: str | None
    created_at: datetime
    created_by: str
    status: str = PydanticField(description="active, expired, used_up or revoked")


class EnrollmentTokenCreated(EnrollmentTokenPublic):
    token: str = PydanticField(description="The secret: in this response and in the QR code.")
    enroll_url: str


Serial = Annotated[
    str, StringConstraints(strip_whitespace=True, to_upper=True, max_length=100, pattern=r"^[A-Za-z0-9-]*$")
]
Text200 = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]


class EnrollingDevice(Input):
    serial: Serial | None = None
    platform: Platform
    model: Text200 | None = None
    os_version: OsVersion | None = None
    name: Text200 | None = None


class EnrollRequest(Input):
    token: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    csr: Annotated[str, StringConstraints(min_length=1, max_length=16 * 1024)]
    aup_accepted: bool = False
    device: EnrollingDevice


class EnrollResponse(BaseModel):
    device_id: str
    certificate: str
    ca_certificates: list[str]
    checkin_url: str


class RevokeRequest(Input):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
