from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AnyHttpUrl, BaseModel, StringConstraints, UrlConstraints, field_validator
from pydantic import Field as PydanticField
from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel

from mdm.database import JsonType, UtcDateTime
from mdm.validation import Input


class EventType(StrEnum):
    device_enrolled = "device.enrolled"
    # An Apple device let go of management on its own (its MDM profile was removed): a technician follows up.
    device_unenrolled = "device.unenrolled"
    device_noncompliant = "device.noncompliant"
    device_compliant = "device.compliant"
    device_quarantined = "device.quarantined"
    compliance_run_completed = "compliance.run_completed"
    exit_step_failed = "exit.step_failed"
    exit_completed = "exit.completed"
    apple_push_certificate_expiring = "apple.push_certificate_expiring"


class DeliveryStatus(StrEnum):
    pending = "pending"  # waiting for its first attempt or a retry
    delivered = "delivered"  # the receiver answered 2xx
    failed = "failed"  # given up: no 2xx within 24 hours of the event
    cancelled = "cancelled"  # its webhook was deleted first


# --- Tables ----------------------------------------------------------------------------------------


class Webhook(SQLModel, table=True):
    __tablename__ = "webhook"

    id: str = Field(primary_key=True, max_length=36)
    url: str = Field(max_length=2000)
    events: list[str] = Field(default_factory=list, sa_column=Column(JsonType, nullable=False))
    # The HMAC key, sealed (mdm.sealing); destroyed when the webhook is deleted.
    sealed_secret: str | None = Field(default=None, max_length=500)
    description: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(sa_type=UtcDateTime)
    created_by: str = Field(max_length=250)
    deleted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class WebhookDelivery(SQLModel, table=True):
    """The outbox: one row per event and subscribed webhook, written in the emitting transaction.

    It is also the delivery log. `body` is the exact JSON sent (and signed) on every attempt.
    """

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        Index("ix_webhook_delivery_due", "status", "next_attempt_at"),
        Index("ix_webhook_delivery_webhook", "webhook_id", "id"),
    )

    id: str = Field(primary_key=True, max_length=36)
    webhook_id: str = Field(foreign_key="webhook.id", max_length=36)
    event_id: str = Field(max_length=36)
    event_type: str = Field(max_length=50)
    body: str = Field(sa_type=Text)
    status: str = Field(default=DeliveryStatus.pending.value, max_length=20)
    attempts: int = 0
    created_at: datetime = Field(sa_type=UtcDateTime)  # when the event occurred
    # While an attempt is in flight this is the end of the sender's claim: a sender that dies mid-way
    # leaves the row due again when it passes. NULL once delivered, failed or cancelled.
    next_attempt_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    last_attempt_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=500)
    delivered_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


# --- API schemas -----------------------------------------------------------------------------------

WebhookUrl = Annotated[AnyHttpUrl, UrlConstraints(max_length=2000, allowed_schemes=["http", "https"])]
Secret = Annotated[str, StringConstraints(min_length=16, max_length=200)]


class WebhookCreate(Input):
    url: WebhookUrl = PydanticField(
        description="http or https, no user name or password. Its host must resolve to public addresses only "
        "(no loopback, private, link-local, shared, multicast, reserved or metadata address) unless the "
        "operator allows it with MDM_WEBHOOK_ALLOWED_HOSTS; otherwise 422."
    )
    events: list[EventType] = PydanticField(min_length=1, max_length=len(EventType))
    secret: Secret | None = PydanticField(
        None, description="The HMAC-SHA256 key. Leave it out and one is made and shown once, in the answer."
    )
    description: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = None

    @field_validator("url")
    @classmethod
    def _no_credentials_in_url(cls, url: AnyHttpUrl) -> AnyHttpUrl:
        # The URL is shown to every reader of the webhook; the secret is not.
        if url.username or url.password:
            raise ValueError("put no user name or password in the URL: requests are signed with the secret")
        return url

    @field_validator("events")
    @classmethod
    def _each_event_once(cls, events: list[EventType]) -> list[EventType]:
        return sorted(set(events))


class WebhookPublic(BaseModel):
    id: str
    url: str
    events: list[EventType]
    description: str | None
    created_at: datetime
    created_by: str


class WebhookCreated(WebhookPublic):
    secret: str = PydanticField(description="The signing secret. Shown once; store it now.")


class DeliveryPublic(BaseModel):
    id: str
    event_id: str
    event_type: EventType
    status: DeliveryStatus
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None = PydanticField(description="null once delivered, failed or cancelled")
    last_attempt_at: datetime | None
    last_status_code: int | None = PydanticField(description="The receiver's HTTP status; null if none came back")
    last_error: str | None = PydanticField(
        description="Why the last attempt failed, in neutral words: 'connection failed', 'host not found', "
        "'refused: address not allowed', 'no answer within N s', 'HTTP n'; never a socket error"
    )
    delivered_at: datetime | None
