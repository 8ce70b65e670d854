"""reclaim policies set per scaling group with the CLI

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reclaim_policies",
        sa.Column("scaling_group", sa.String(length=64), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scaling_group", name="pk_reclaim_policies"),
    )


def downgrade() -> None:
    op.drop_table("reclaim_policies")
