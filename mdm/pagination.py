"""Keyset pagination: `?limit=&cursor=` in, `{"items", "next_cursor"}` out, as API.md's conventions say."""

import base64
import binascii
import re
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select

from mdm.errors import Invalid
from mdm.ids import is_uuid

T = TypeVar("T")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


class PageParams(BaseModel):
    limit: int
    cursor: str | None


def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> PageParams:
    return PageParams(limit=limit, cursor=cursor)


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(str(value).encode()).decode().rstrip("=")


# Plain ASCII digits that fit a 64-bit column: int() alone would take "²", "1_0" and numbers no database holds.
_INTEGER_KEY = re.compile(r"-?[0-9]{1,18}")


def bad_cursor() -> Invalid:
    return Invalid(
        "The cursor is not one this service gave out; start again without it.",
        [{"field": "query.cursor", "message": "not a cursor from this list's next_cursor"}],
    )


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise bad_cursor() from exc


def keyset(
    statement: Select[Any], key: ColumnElement[Any], params: PageParams, *, descending: bool = False
) -> Select[Any]:
    """Orders by `key` and starts after the cursor; fetches one extra row to know whether more follow."""
    if params.cursor is not None:
        after: Any = decode_cursor(params.cursor)
        if key.type.python_type is int:
            if not _INTEGER_KEY.fullmatch(after):
                raise bad_cursor()
            after = int(after)
        elif not _is_canonical_uuid(after):  # every other key is an id
            raise bad_cursor()
        statement = statement.where(key < after if descending else key > after)
    return statement.order_by(key.desc() if descending else key).limit(params.limit + 1)


def _is_canonical_uuid(value: str) -> bool:
    # Ids are stored in their canonical form, the only one encode_cursor gives out.
    return is_uuid(value) and str(uuid.UUID(value)) == value


def page_of(rows: Sequence[T], params: PageParams, key_of: Any) -> tuple[list[T], str | None]:
    items = list(rows[: params.limit])
    more = len(rows) > params.limit
    return items, encode_cursor(key_of(items[-1])) if more and items else None
