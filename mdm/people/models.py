from datetime import date, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, StringConstraints, field_validator
from pydantic import Field as PydanticField
from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from mdm.database import UtcDateTime
from mdm.validation import Input


class PersonKind(StrEnum):
    learner = "learner"
    staff = "staff"
    visitor = "visitor"


class Person(SQLModel, table=True):
    __tablename__ = "person"

    id: str = Field(primary_key=True, max_length=36)
    external_id: str = Field(max_length=200, unique=True)
    kind: str = Field(max_length=20)
    display_name: str = Field(max_length=200)
    date_of_birth: date | None = None
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)


class PersonGroup(SQLModel, table=True):
    """A person's groups, one row each, so scopes like "Year 9" resolve with a join, not JSON parsing."""

    __tablename__ = "person_group"
    __table_args__ = (Index("ix_person_group_group", "group_name"),)

    person_id: str = Field(foreign_key="person.id", primary_key=True, ondelete="CASCADE", max_length=36)
    group_name: str = Field(primary_key=True, max_length=100)


ExternalId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
GroupName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class PersonCreate(Input):
    external_id: ExternalId = PydanticField(description="UPN for learners, staff code for staff.")
    kind: PersonKind
    display_name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    groups: list[GroupName] = PydanticField(default_factory=list, max_length=200)
    date_of_birth: date | None = None

    @field_validator("groups")
    @classmethod
    def _unique_groups(cls, groups: list[str]) -> list[str]:
        return list(dict.fromkeys(groups))

    @field_validator("date_of_birth")
    @classmethod
    def _born_in_the_past(cls, value: date | None) -> date | None:
        if value is not None and value > date.today():
            raise ValueError("date of birth is in the future")
        return value


class PersonPublic(BaseModel):
    id: str
    external_id: str
    kind: PersonKind
    display_name: str
    groups: list[str]
    date_of_birth: date | None
    created_at: datetime
    updated_at: datetime
