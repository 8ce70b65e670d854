"""agent liveness and instance markers

Revision ID: 0004
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0006"
branch_labels = None
depends_on = None

_AGENT_COLUMNS = ("last_contact", "lost_since", "instance_id", "instance_since")


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER TABLE ... ADD several columns otherwise.
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("last_contact", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("lost_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("instance_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("instance_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        for name in _AGENT_COLUMNS:
            batch.drop_column(name)
