"""Keyset pagination: `?limit=&cursor=` in, `{"items", "next_cursor"}` out, as API.md's conventions say."""

import base64
import binascii
from collections.abc import Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select

from mdm.errors import ProblemError

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


def decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ProblemError(422, "The cursor is not one this service gave out.") from exc


def keyset(
    statement: Select[Any], key: ColumnElement[Any], params: PageParams, *, descending: bool = False
) -> Select[Any]:
    """Orders by `key` and starts after the cursor; fetches one extra row to know whether more follow."""
    if params.cursor is not None:
        after = decode_cursor(params.cursor)
        if key.type.python_type is int:
            if not after.lstrip("-").isdigit():
                raise ProblemError(422, "The cursor is not one this service gave out.")
            after = int(after)  # type: ignore[assignment]
        statement = statement.where(key < after if descending else key > after)
    return statement.order_by(key.desc() if descending else key).limit(params.limit + 1)


def page_of(rows: Sequence[T], params: PageParams, key_of: Any) -> tuple[list[T], str | None]:
    items = list(rows[: params.limit])
    more = len(rows) > params.limit
    return items, encode_cursor(key_of(items[-1])) if more and items else None
