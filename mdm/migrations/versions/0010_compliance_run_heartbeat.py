"""Compliance runs touch their record with every batch, so a run whose process died can be told apart.

A nightly run is taken over through its job lease; a manual one (`mdm compliance run`, the API) has no
lease, and one killed mid-way stayed 'running' for ever. Runs silent for long are now marked abandoned.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 02:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mdm.database

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("compliance_run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", mdm.database.UtcDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("compliance_run", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
