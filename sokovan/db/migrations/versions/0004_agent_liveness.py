"""agent liveness, instance markers and leftovers of kernels terminated without their agent

Revision ID: 0004
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0001"
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
    op.create_table(
        "agent_leftovers",
        sa.Column("kernel_id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("kernel_id", name=op.f("pk_agent_leftovers")),
    )
    op.create_index(
        op.f("ix_agent_leftovers_agent_id"), "agent_leftovers", ["agent_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_agent_leftovers_agent_id"), table_name="agent_leftovers")
    op.drop_table("agent_leftovers")
    with op.batch_alter_table("agents") as batch:
        for name in _AGENT_COLUMNS:
            batch.drop_column(name)
