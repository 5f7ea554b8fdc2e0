from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, StringConstraints
from pydantic import Field as PydanticField
from sqlalchemy import Column, Index
from sqlmodel import Field, SQLModel

from mdm.database import JsonType, UtcDateTime
from mdm.validation import Input, Reported


class CommandType(StrEnum):
    InstallProfile = "InstallProfile"
    RemoveProfile = "RemoveProfile"
    InstallApplication = "InstallApplication"
    RemoveApplication = "RemoveApplication"
    DeviceLock = "DeviceLock"
    EraseDevice = "EraseDevice"
    RemoveMDM = "RemoveMDM"
    # Asks the device to report one piece of its inventory (Apple's queries; the agent reports whole).
    QueryInventory = "QueryInventory"


class CommandStatus(StrEnum):
    queued = "queued"
    sent = "sent"
    acknowledged = "acknowledged"
    error = "error"
    not_now = "not_now"
    expired = "expired"
    cancelled = "cancelled"


# A command in one of these states waits for delivery or for the device's answer.
OPEN_STATUSES = (CommandStatus.queued.value, CommandStatus.sent.value, CommandStatus.not_now.value)
FINAL_STATUSES = frozenset({"acknowledged", "error", "expired", "cancelled"})


class Command(SQLModel, table=True):
    __tablename__ = "command"
    __table_args__ = (
        Index("ix_command_device_status", "device_id", "status"),
        Index("ix_command_device_target", "device_id", "target"),
    )

    id: str = Field(primary_key=True, max_length=36)
    device_id: str = Field(foreign_key="device.id", max_length=36)
    type: str = Field(max_length=40)
    # The intent's parameters (mdm/commands/intents.py), never a wire format: no secret is ever stored here.
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JsonType, nullable=False))
    # What the command acts on ("profile:<identifier>", "app:<identifier>"), so the reconciler never
    # queues a second command for the same thing while one is open.
    target: str | None = Field(default=None, max_length=300)
    # What the command means for its target ("install@3", "remove"): an open command with the same
    # intent makes a new one pointless, a different intent makes the old one stale.
    intent: str | None = Field(default=None, max_length=100)
    status: str = Field(default=CommandStatus.queued.value, max_length=20)
    created_at: datetime = Field(sa_type=UtcDateTime)
    created_by: str = Field(max_length=250)
    not_before: datetime | None = Field(default=None, sa_type=UtcDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    deliveries: int = 0
    not_now_count: int = 0
    answered_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    result_detail: str | None = Field(default=None, max_length=2000)


class CommandPublic(BaseModel):
    id: str
    device_id: str
    type: CommandType
    payload: dict[str, Any]
    status: CommandStatus
    created_at: datetime
    created_by: str
    not_before: datetime | None
    expires_at: datetime | None
    sent_at: datetime | None
    deliveries: int
    answered_at: datetime | None
    result_detail: str | None


Message = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]


class TechnicianCommand(Input):
    """What a technician may send by hand. Erasing needs `"confirm": true`."""

    type: Literal["DeviceLock", "EraseDevice"]
    message: Message | None = PydanticField(None, description="Shown on a locked device's screen.")
    confirm: bool = False
    expires_in_hours: int | None = PydanticField(None, ge=1, le=24 * 90)


class CommandResult(Reported):
    status: Literal["acknowledged", "error", "not_now"]
    detail: Annotated[str, StringConstraints(max_length=2000)] | None = None
