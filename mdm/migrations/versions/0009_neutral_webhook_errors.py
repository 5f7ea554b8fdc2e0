"""Webhook delivery log: raw connect errors recorded before M4 become neutral reasons.

Auditors read `last_error`. Before M4 it held socket errors ("ConnectError: [Errno 111] Connection
refused") and redirect targets, which told which internal ports answered. New attempts record only
a neutral reason; this rewrites what older attempts left behind the same way. Nothing to undo.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 02:00:00
"""

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Self-contained on purpose: a migration must not change when the app's wording does.
GAVE_UP = re.compile(r"; gave up after \d+ attempt\(s\), 24 hours after the event$")
REDIRECT = re.compile(r"^(HTTP 3\d\d): redirects are not followed\b")
KEPT = re.compile(r"^(HTTP \d{3}|no answer within [\d.]+ s|the webhook's secret could not be unsealed)")

delivery = sa.table("webhook_delivery", sa.column("id", sa.String), sa.column("last_error", sa.String))


def neutral(error: str) -> str:
    suffix = GAVE_UP.search(error)
    head = error[: suffix.start()] if suffix else error
    redirect = REDIRECT.match(head)
    if redirect:
        head = f"{redirect.group(1)}: redirects are not followed"
    elif not KEPT.match(head):
        head = "connection failed"
    return head + (suffix.group(0) if suffix else "")


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.select(delivery.c.id, delivery.c.last_error).where(delivery.c.last_error.is_not(None)))
    changed = [{"key": id_, "error": neutral(error)} for id_, error in rows if neutral(error) != error]
    if changed:
        statement = delivery.update().where(delivery.c.id == sa.bindparam("key")).values(last_error=sa.bindparam("error"))
        connection.execute(statement, changed)


def downgrade() -> None:
    pass  # the raw errors are gone, as intended
