"""admission: an index for the pending queue

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The queue is read oldest first per scaling group on every placement and tick.
    op.create_index(
        "ix_sessions_status_sg_created", "sessions", ["status", "scaling_group", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_status_sg_created", table_name="sessions")
