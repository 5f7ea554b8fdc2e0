"""The agent protocol's wire shapes (shared/API.md, "The device channel") and its replay guard."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlmodel import Field, SQLModel

from mdm.commands.models import CommandType
from mdm.database import UtcDateTime
from mdm.inventory.models import Inventory


class DeviceNonce(SQLModel, table=True):
    """Nonces seen from each device inside the clock-skew window; a repeat is a replay."""

    __tablename__ = "device_nonce"

    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=36)
    nonce: str = Field(primary_key=True, max_length=64)
    seen_at: datetime = Field(sa_type=UtcDateTime)


class CheckinRequest(BaseModel):
    inventory: Inventory


class DeviceCommandForDevice(BaseModel):
    """A command as the agent receives it: its intent rendered into the agent's JSON."""

    id: str
    type: CommandType
    payload: dict[str, Any]


class CheckinResponse(BaseModel):
    commands: list[DeviceCommandForDevice]
    next_checkin_seconds: int
