"""Apple devices: each device's protocol, identities issued by SCEP, Apple's push facts, the push certificate.

Every existing device spoke the agent's protocol, so `protocol` starts as 'agent' for all of them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 05:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mdm.database

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(sa.Column("protocol", sa.String(length=10), nullable=False, server_default="agent"))
    op.create_table(
        "apple_identity",
        sa.Column("serial_number", sa.String(length=40), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("token_id", sa.String(length=36), nullable=False),
        sa.Column("issued_at", mdm.database.UtcDateTime(), nullable=False),
        sa.Column("not_after", mdm.database.UtcDateTime(), nullable=False),
        sa.Column("device_id", sa.String(length=36), nullable=True),
        sa.Column("udid", sa.String(length=100), nullable=True),
        sa.Column("bound_at", mdm.database.UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.ForeignKeyConstraint(["token_id"], ["enrollment_token.id"]),
        sa.PrimaryKeyConstraint("serial_number"),
    )
    op.create_index("ix_apple_identity_device_id", "apple_identity", ["device_id"])
    op.create_index("ix_apple_identity_token_id", "apple_identity", ["token_id"])
    op.create_table(
        "apple_device",
        sa.Column("device_id", sa.String(length=36), nullable=False),
        sa.Column("udid", sa.String(length=100), nullable=False),
        sa.Column("topic", sa.String(length=255), nullable=True),
        sa.Column("push_token", sa.String(length=200), nullable=True),
        sa.Column("push_magic", sa.String(length=100), nullable=True),
        sa.Column("token_updated_at", mdm.database.UtcDateTime(), nullable=True),
        sa.Column("push_token_dead_at", mdm.database.UtcDateTime(), nullable=True),
        sa.Column("last_push_at", mdm.database.UtcDateTime(), nullable=True),
        sa.Column("checked_out_at", mdm.database.UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("device_id"),
        sa.UniqueConstraint("udid"),
    )
    op.create_table(
        "apple_push_certificate",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("key_sealed", sa.Text(), nullable=False),
        sa.Column("not_after", mdm.database.UtcDateTime(), nullable=False),
        sa.Column("loaded_at", mdm.database.UtcDateTime(), nullable=False),
        sa.Column("loaded_by", sa.String(length=250), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("apple_push_certificate")
    op.drop_table("apple_device")
    op.drop_index("ix_apple_identity_token_id", table_name="apple_identity")
    op.drop_index("ix_apple_identity_device_id", table_name="apple_identity")
    op.drop_table("apple_identity")
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_column("protocol")
