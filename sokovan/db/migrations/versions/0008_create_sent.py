"""whether a kernel's create_kernels was sent: a kernel never sent needs no destroy

Revision ID: 0008
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Kernels that existed before may have been sent: true keeps their destroy (a destroy of
    # an absent kernel succeeds), so nothing created is ever left behind.
    with op.batch_alter_table("kernels") as batch:
        batch.add_column(
            sa.Column("create_sent", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("kernels") as batch:
        batch.drop_column("create_sent")
