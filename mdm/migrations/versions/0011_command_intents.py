"""Commands hold intents, rendered when delivered: the sealed copy of a rendered profile goes.

A queued InstallProfile used to carry the agent's rendered profile, with a sealed copy when it held a
secret. Now the row holds only the intent ({identifier, version}) and the device's adapter renders the
profile when the device collects it, so the sealed copies are dropped. Commands still waiting keep
working: their payload names the profile and version, which is all delivery reads. Older rows keep
their redacted payloads as history.

Downgrading cannot bring the rendered copies back: waiting InstallProfile commands are cancelled, and
the older code queues them again, rendered, at the device's next reconcile.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("command", schema=None) as batch_op:
        batch_op.drop_column("sealed_payload")


def downgrade() -> None:
    with op.batch_alter_table("command", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sealed_payload", sa.Text(), nullable=True))
    op.execute(
        "UPDATE command SET status = 'cancelled', result_detail = 'cancelled by a downgrade: queued again rendered' "
        "WHERE type = 'InstallProfile' AND status IN ('queued', 'sent', 'not_now')"
    )
