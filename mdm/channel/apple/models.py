"""What the Apple adapter keeps about a device and about the school's push certificate."""

from datetime import datetime

from sqlalchemy import Text
from sqlmodel import Field, SQLModel

from mdm.database import UtcDateTime


class AppleDevice(SQLModel, table=True):
    """An Apple device's protocol facts: its UDID and how to wake it (TokenUpdate), and when it left."""

    __tablename__ = "apple_device"

    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=36)
    udid: str = Field(max_length=100, unique=True)
    topic: str | None = Field(default=None, max_length=255)
    # Hex of the APNs device token, and the PushMagic the device expects in every push's payload.
    push_token: str | None = Field(default=None, max_length=200)
    push_magic: str | None = Field(default=None, max_length=100)
    token_updated_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # APNs said the token is no longer valid (410, BadDeviceToken): no push until the next TokenUpdate.
    push_token_dead_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # When the last push went out: pushes are coalesced to one per device per interval.
    last_push_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    checked_out_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class ApplePushCertificate(SQLModel, table=True):
    """The school's APNs MDM push certificate (one at a time; `id` is always 1), its key sealed at rest."""

    __tablename__ = "apple_push_certificate"

    id: int = Field(default=1, primary_key=True)
    topic: str = Field(max_length=255)
    certificate_pem: str = Field(sa_type=Text)
    key_sealed: str = Field(sa_type=Text)
    not_after: datetime = Field(sa_type=UtcDateTime)
    loaded_at: datetime = Field(sa_type=UtcDateTime)
    loaded_by: str = Field(max_length=250)
