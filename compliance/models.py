from datetime import datetime
from typing import Any

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlalchemy import Column, Index
from sqlmodel import Field, SQLModel

from mdm.categories import Category
from mdm.database import JsonType, UtcDateTime
from mdm.validation import Input, not_null


class ComplianceRule(SQLModel, table=True):
    __tablename__ = "compliance_rule"

    id: str = Field(primary_key=True, max_length=50)
    enabled: bool = True
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JsonType, nullable=False))
    updated_at: datetime = Field(sa_type=UtcDateTime)


class Escalation(SQLModel, table=True):
    """Per category: how long a device may stay non-compliant before it loses network access."""

    __tablename__ = "compliance_escalation"

    category: str = Field(primary_key=True, max_length=30)
    quarantine: bool = True
    quarantine_after_days: int = 7
    updated_at: datetime = Field(sa_type=UtcDateTime)


class ComplianceRun(SQLModel, table=True):
    __tablename__ = "compliance_run"

    id: str = Field(primary_key=True, max_length=36)
    status: str = Field(max_length=20)  # running, completed, failed
    trigger: str = Field(max_length=50)
    started_at: datetime = Field(sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # Touched with every batch: a run silent for long died with its process (see service.start_run).
    heartbeat_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    devices_evaluated: int = 0
    compliant: int = 0
    non_compliant: int = 0
    unknown: int = 0
    changed: int = 0
    remediated: int = 0
    quarantined: int = 0
    released: int = 0
    duration_ms: int | None = None
    detail: str | None = Field(default=None, max_length=2000)


class ComplianceHistory(SQLModel, table=True):
    """A device's verdict, written only when its status or failures change."""

    __tablename__ = "compliance_history"
    __table_args__ = (Index("ix_compliance_history_device", "device_id", "changed_at"),)

    id: str = Field(primary_key=True, max_length=36)
    device_id: str = Field(foreign_key="device.id", max_length=36)
    run_id: str | None = Field(default=None, max_length=36)
    status: str = Field(max_length=20)
    failures: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JsonType, nullable=False))
    changed_at: datetime = Field(sa_type=UtcDateTime)


class RulePublic(BaseModel):
    id: str
    description: str
    source: str
    enabled: bool
    params: dict[str, Any]


class RuleUpdate(Input):
    enabled: bool | None = None
    params: dict[str, Any] | None = None

    _not_null = not_null("enabled", "params")


class EscalationPublic(BaseModel):
    category: Category
    quarantine: bool
    quarantine_after_days: int = PydanticField(ge=1, le=365)


class RunPublic(BaseModel):
    id: str
    status: str
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    devices_evaluated: int
    compliant: int
    non_compliant: int
    unknown: int
    changed: int
    remediated: int
    quarantined: int
    released: int
    duration_ms: int | None
    # Why a run failed or was abandoned; None for a run that completed.
    detail: str | None = None
