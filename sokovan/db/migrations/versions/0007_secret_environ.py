"""secret environ values, encrypted at rest

Revision ID: 0007
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "environ_secrets",
        sa.Column("ref", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ref", name=op.f("pk_environ_secrets")),
    )
    with op.batch_alter_table("environ_secrets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_environ_secrets_session_id"), ["session_id"])


def downgrade() -> None:
    with op.batch_alter_table("environ_secrets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_environ_secrets_session_id"))
    op.drop_table("environ_secrets")
