"""Input rules every domain shares, so that bad input is a 422 at the edge and never a 500 in the database.

- NUL characters: PostgreSQL's text and JSONB cannot store them (SQLite can, so the same request would
  behave differently on the two databases). `Input`, the base of every request body, refuses them with
  the field named; `Reported`, the base of what a device reports about itself, drops them instead, so a
  device with a buggy agent can still check in and be locked or offboarded.
- Times: a zone offset can push a valid local time past year 9999 once converted to UTC.
- Partial updates: a field may be left out (kept as it is) but null cannot stand for a required value.
- Integers: the columns are 32-bit on PostgreSQL.
"""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, StringConstraints, field_validator

NUL = "\x00"
NUL_MESSAGE = "must not contain NUL characters (\\u0000)"
MAX_INT32 = 2**31 - 1  # the largest value an INTEGER column holds on PostgreSQL
# The device record's column: what a device says of its OS, at enrolment or in any report, must fit it.
MAX_OS_VERSION = 50


def contains_nul(value: Any) -> bool:
    """Whether any text in `value` (strings, lists, dicts and the fields of nested models) holds a NUL."""
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, BaseModel):
        return contains_nul(value.__dict__)
    if isinstance(value, dict):
        return any(contains_nul(key) or contains_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(contains_nul(item) for item in value)
    return False


class Input(BaseModel):
    """The base of request bodies: text with a NUL is refused, naming the field."""

    @field_validator("*", mode="after")
    @classmethod
    def _refuse_nul(cls, value: Any) -> Any:
        # After the field's own validation, so a nested Input has already named its own bad field.
        if contains_nul(value):
            raise ValueError(NUL_MESSAGE)
        return value


class Reported(BaseModel):
    """The base of what a device reports about itself: NULs are dropped rather than refusing the device.

    Only a field's own text is cleaned, which keeps a check-in of thousands of apps cheap: nested
    models (an app, a profile) must be `Reported` too.
    """

    @field_validator("*", mode="before")
    @classmethod
    def _drop_nul(cls, value: Any) -> Any:
        return value.replace(NUL, "") if isinstance(value, str) else value


def as_utc(value: datetime) -> datetime:
    """The same moment in UTC (no zone means UTC); ValueError when UTC has no such year (before 1, after 9999)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("is out of range once converted to UTC (years 1 to 9999)") from exc


UtcTime = Annotated[datetime, AfterValidator(as_utc)]
# For filters, where a time without a zone would be ambiguous.
AwareUtcTime = Annotated[AwareDatetime, AfterValidator(as_utc)]
OsVersion = Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_OS_VERSION)]


def not_null(*fields: str) -> Callable[..., Any]:
    """For partial updates: these fields may be left out (unchanged) but not sent as null.

    Use in a model body: `_not_null = not_null("name", "payloads")`.
    """

    def refuse(value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null: leave the field out to keep its current value")
        return value

    return field_validator(*fields, mode="before")(refuse)
