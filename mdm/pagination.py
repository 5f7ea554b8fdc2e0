"""Keyset pagination: `?limit=&cursor=` in, `{"items", "next_cursor"}` out, as API.md's conventions say."""

import base64
import binascii
from collections.abc import Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select

from mdm.errors import ProblemError
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


def _bad_cursor() -> ProblemError:
    return ProblemError(422, "The cursor is not one this service gave out; start again without it.")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise _bad_cursor() from exc


def keyset(
    statement: Select[Any], key: ColumnElement[Any], params: PageParams, *, descending: bool = False
) -> Select[Any]:
    """Orders by `key` and starts after the cursor; fetches one extra row to know whether more follow."""
    if params.cursor is not None:
        after: Any = decode_cursor(params.cursor)
        if key.type.python_type is int:
            if not after.lstrip("-").isdigit():
                raise _bad_cursor()
            after = int(after)
        elif not is_uuid(after):  # every other key is an id
            raise _bad_cursor()
        statement = statement.where(key < after if descending else key > after)
    return statement.order_by(key.desc() if descending else key).limit(params.limit + 1)


def page_of(rows: Sequence[T], params: PageParams, key_of: Any) -> tuple[list[T], str | None]:
    items = list(rows[: params.limit])
    more = len(rows) > params.limit
    return items, encode_cursor(key_of(items[-1])) if more and items else None
