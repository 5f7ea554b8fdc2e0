from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, StringConstraints
from pydantic import Field as PydanticField
from sqlalchemy import Column, Index, text
from sqlmodel import Field, SQLModel

from mdm.database import JsonType, UtcDateTime
from mdm.validation import Input


class CaseStatus(StrEnum):
    scheduled = "scheduled"
    in_progress = "in_progress"
    completed = "completed"
    completed_with_exceptions = "completed_with_exceptions"
    cancelled = "cancelled"


class StepStatus(StrEnum):
    pending = "pending"
    waiting_for_device = "waiting_for_device"
    done = "done"
    failed = "failed"
    skipped = "skipped"
    done_manually = "done_manually"


FINISHED_STEPS = frozenset({"done", "skipped", "done_manually"})
OPEN_CASE = "status IN ('scheduled', 'in_progress')"


class ExitCase(SQLModel, table=True):
    __tablename__ = "exit_case"
    __table_args__ = (
        # One open case per person, enforced by the database: two racing requests make one case.
        Index(
            "ux_exit_case_open_person",
            "person_id",
            unique=True,
            sqlite_where=text(OPEN_CASE),
            postgresql_where=text(OPEN_CASE),
        ),
    )

    id: str = Field(primary_key=True, max_length=36)
    person_id: str = Field(foreign_key="person.id", index=True, max_length=36)
    status: str = Field(max_length=30)
    reason: str = Field(max_length=500)
    leaving_date: date
    created_at: datetime = Field(sa_type=UtcDateTime)
    created_by: str = Field(max_length=250)
    started_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    revoked_tokens: list[str] = Field(default_factory=list, sa_column=Column(JsonType, nullable=False))


class ExitDevice(SQLModel, table=True):
    """One device of a case, with what the exit did to it: the evidence behind each step."""

    __tablename__ = "exit_device"

    case_id: str = Field(foreign_key="exit_case.id", primary_key=True, max_length=36)
    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=36)
    ownership: str = Field(max_length=10)  # personal or school
    apps_removed: list[str] = Field(default_factory=list, sa_column=Column(JsonType, nullable=False))
    apps_kept: list[str] = Field(default_factory=list, sa_column=Column(JsonType, nullable=False))
    licences_held: list[str] = Field(default_factory=list, sa_column=Column(JsonType, nullable=False))
    licences_returned: list[str] = Field(default_factory=list, sa_column=Column(JsonType, nullable=False))
    certificate_serials: list[str] = Field(default_factory=list, sa_column=Column(JsonType, nullable=False))
    crl_number: int | None = None


class ExitStep(SQLModel, table=True):
    __tablename__ = "exit_step"
    __table_args__ = (Index("ix_exit_step_case", "case_id", "device_id", "position"),)

    id: str = Field(primary_key=True, max_length=36)
    case_id: str = Field(foreign_key="exit_case.id", max_length=36)
    device_id: str = Field(foreign_key="device.id", index=True, max_length=36)
    position: int
    kind: str = Field(max_length=30)
    status: str = Field(default=StepStatus.pending.value, max_length=20)
    detail: str | None = Field(default=None, max_length=2000)
    command_ids: list[str] = Field(default_factory=list, sa_column=Column(JsonType, nullable=False))
    acknowledgements: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JsonType, nullable=False))
    actor: str | None = Field(default=None, max_length=250)
    completed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


# --- API schemas -----------------------------------------------------------------------------------


class ExitCreate(Input):
    person_id: str = PydanticField(max_length=36)
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)] = "left school"
    leaving_date: date | None = PydanticField(None, description="Today (school time zone) if absent.")
    dry_run: bool = False


class StepNote(Input):
    note: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class StepPublic(BaseModel):
    id: str
    kind: str
    status: StepStatus
    detail: str | None
    command_id: str | None
    command_ids: list[str]
    completed_at: datetime | None


class ExitDevicePublic(BaseModel):
    device_id: str
    ownership: str
    steps: list[StepPublic]
    apps_removed: list[str]
    apps_kept: list[str]
    licences_returned: list[str]


class ExitCasePublic(BaseModel):
    id: str | None
    person_id: str
    status: CaseStatus | str
    reason: str
    leaving_date: date
    overdue: bool = False
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    devices: list[ExitDevicePublic]
