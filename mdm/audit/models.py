from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Column, Index
from sqlmodel import Field, SQLModel

from mdm.database import JsonType, UtcDateTime
from mdm.validation import AwareUtcTime

GENESIS_HASH = "0" * 64


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_event_object", "object_type", "object_id"),
        Index("ix_audit_event_occurred_at", "occurred_at"),
    )

    # Assigned from audit_head under its row lock, so the chain has no gaps and no forks.
    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    id: str = Field(max_length=36, unique=True)
    occurred_at: datetime = Field(sa_type=UtcDateTime)
    actor: str = Field(max_length=250, index=True)
    actor_role: str | None = Field(default=None, max_length=20)
    action: str = Field(max_length=100, index=True)
    object_type: str = Field(max_length=50)
    object_id: str | None = Field(default=None, max_length=200)
    summary: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JsonType, nullable=False))
    request_id: str | None = Field(default=None, max_length=128)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditHead(SQLModel, table=True):
    """One row: the end of the chain. Locking it serialises appends on PostgreSQL."""

    __tablename__ = "audit_head"

    id: int = Field(primary_key=True)
    last_seq: int
    last_hash: str = Field(max_length=64)


@dataclass(frozen=True)
class AuditQuery:
    """Which events to list: each filter given narrows the list (the route's query parameters)."""

    actor: Annotated[str | None, Query(description="e.g. token:Jo Bloggs or cli:root")] = None
    action: Annotated[str | None, Query(description="e.g. person.create")] = None
    object_type: str | None = None
    object_id: str | None = None
    since: AwareUtcTime | None = None
    until: AwareUtcTime | None = None


class AuditEventPublic(BaseModel):
    seq: int
    id: str
    occurred_at: datetime
    actor: str
    actor_role: str | None
    action: str
    object_type: str
    object_id: str | None
    summary: dict[str, Any]
    request_id: str | None
    prev_hash: str
    hash: str


class ChainReport(BaseModel):
    ok: bool
    events_checked: int
    first_broken_seq: int | None = None
    problem: str | None = None
