"""Keyset pagination: `?limit=&cursor=` in, `{"items", "next_cursor"}` out, as API.md's conventions say.

Every list service calls `paginate`, so each list checks its cursor the same way (a cursor this service
did not give out is a 422) and no route builds SQL of its own.
"""

import base64
import binascii
import re
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Generic, TypeVar, cast

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import ColumnElement, Row, Select
from sqlmodel import Session

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


def _keyset(
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


def paginate(
    session: Session,
    statement: Select[Any],
    key: Any,
    params: PageParams,
    publish: Callable[[list[Any]], list[T]],
    *,
    descending: bool = False,
) -> Page[T]:
    """One page of `statement` in `key` order, and the cursor of the next page (None on the last).

    `key` is a column of the statement's first entity. `publish` turns the page's rows into the API's
    items in one go, so a service can load what they need in bulk (a person's groups) rather than per row.
    """
    rows = session.exec(cast(Any, _keyset(statement, key, params, descending=descending))).all()
    items = list(rows[: params.limit])
    more = len(rows) > params.limit
    cursor = encode_cursor(_key_value(items[-1], key)) if more and items else None
    return Page(items=publish(items), next_cursor=cursor)


def _key_value(row: Any, key: Any) -> Any:
    entity = row[0] if isinstance(row, Row) else row
    return getattr(entity, key.key)
