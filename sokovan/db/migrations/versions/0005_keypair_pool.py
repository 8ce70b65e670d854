"""keypair pool

Revision ID: 0005
Revises: 0007
Create Date: 2026-12-01 09:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "keypair_pool",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key_type", sa.String(length=16), nullable=False),
        sa.Column("ssh_private_key", sa.LargeBinary(), nullable=False),
        sa.Column("ssh_public_key", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keypair_pool")),
    )
    op.create_index("ix_keypair_pool_key_type_id", "keypair_pool", ["key_type", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_keypair_pool_key_type_id", table_name="keypair_pool")
    op.drop_table("keypair_pool")
