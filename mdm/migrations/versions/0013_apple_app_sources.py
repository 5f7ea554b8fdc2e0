"""Apple devices install a catalogue app from the App Store (its id) or an in-house manifest (its URL).

Both are optional: an app with neither can still be required of agent devices, and Apple's adapter
withdraws its install with a reason saying what to add.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("app", schema=None) as batch_op:
        batch_op.add_column(sa.Column("itunes_store_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("manifest_url", sa.String(length=2000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("app", schema=None) as batch_op:
        batch_op.drop_column("manifest_url")
        batch_op.drop_column("itunes_store_id")
