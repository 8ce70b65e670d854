"""agent maintenance: cordon (schedulable) and a drain's intent, deadline and end

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_COLUMNS = ("schedulable", "drain_mode", "drain_deadline", "drained_at")


def upgrade() -> None:
    # Agents known before stay schedulable: maintenance starts only when an operator asks.
    with op.batch_alter_table("agents") as batch:
        batch.add_column(
            sa.Column("schedulable", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.add_column(sa.Column("drain_mode", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("drain_deadline", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("drained_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        for name in _COLUMNS:
            batch.drop_column(name)
