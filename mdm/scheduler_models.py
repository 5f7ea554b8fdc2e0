from datetime import datetime

from sqlmodel import Field, SQLModel

from mdm.database import UtcDateTime


class JobRun(SQLModel, table=True):
    """One run of a scheduled job for one time slot. Its primary key is the claim: one replica wins it."""

    __tablename__ = "job_run"

    job: str = Field(primary_key=True, max_length=100)
    slot: str = Field(primary_key=True, max_length=40)  # the slot's scheduled time, ISO 8601 UTC
    status: str = Field(max_length=20)  # running, completed, failed
    owner: str = Field(max_length=200)  # host:pid of the replica running it
    attempts: int = 1
    started_at: datetime = Field(sa_type=UtcDateTime)
    lease_expires_at: datetime = Field(sa_type=UtcDateTime, index=True)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    detail: str | None = Field(default=None, max_length=2000)
