"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21 06:18:09.370932
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "agents",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("rpc_addr", sa.String(length=255), nullable=False),
        sa.Column("scaling_group", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("status", sa.String(length=16), server_default="ALIVE", nullable=False),
        sa.Column("runtime", sa.String(length=32), nullable=True),
        sa.Column("capacity", sa.JSON(), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=True),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agents")),
    )
    op.create_table(
        "handler_state",
        sa.Column("handler", sa.String(length=64), nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("handler", name=op.f("pk_handler_state")),
    )
    op.create_table(
        "images",
        sa.Column("canonical", sa.String(length=255), nullable=False),
        sa.Column("architecture", sa.String(length=32), server_default="x86_64", nullable=False),
        sa.Column(
            "registry_name", sa.String(length=128), server_default="cr.backend.ai", nullable=False
        ),
        sa.Column(
            "registry_url",
            sa.String(length=255),
            server_default="https://cr.backend.ai",
            nullable=False,
        ),
        sa.Column("is_local", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("digest", sa.String(length=128), server_default="", nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("canonical", name=op.f("pk_images")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("handler", sa.String(length=64), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("operation", sa.String(length=32), nullable=True),
        sa.Column("requested", sa.Integer(), server_default="0", nullable=False),
        sa.Column("succeeded", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("skipped", sa.Integer(), server_default="0", nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fanout_id", sa.String(length=64), nullable=True),
        sa.Column("claim_token", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("scope", sa.JSON(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_runs_handler"), ["handler"], unique=False)
        batch_op.create_index(batch_op.f("ix_runs_status"), ["status"], unique=False)

    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=128), server_default="", nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_info", sa.String(length=64), nullable=True),
        sa.Column("status_data", sa.JSON(), nullable=False),
        sa.Column("scaling_group", sa.String(length=64), server_default="default", nullable=False),
        sa.Column(
            "cluster_mode", sa.String(length=16), server_default="single-node", nullable=False
        ),
        sa.Column("network_type", sa.String(length=16), server_default="volatile", nullable=False),
        sa.Column("network_id", sa.String(length=255), nullable=True),
        sa.Column("user_uuid", sa.Uuid(), nullable=False),
        sa.Column("access_key", sa.String(length=64), server_default="", nullable=False),
        sa.Column("environ", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("terminated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sessions_status"), ["status"], unique=False)

    op.create_table(
        "kernels",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_info", sa.String(length=64), nullable=True),
        sa.Column("status_data", sa.JSON(), nullable=False),
        sa.Column("image", sa.String(length=255), server_default="", nullable=False),
        sa.Column("architecture", sa.String(length=32), server_default="x86_64", nullable=False),
        sa.Column("requested_slots", sa.JSON(), nullable=False),
        sa.Column("occupied_slots", sa.JSON(), nullable=False),
        sa.Column("cluster_role", sa.String(length=16), server_default="main", nullable=False),
        sa.Column("cluster_idx", sa.Integer(), server_default="1", nullable=False),
        sa.Column("local_rank", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cluster_hostname", sa.String(length=64), server_default="main1", nullable=False),
        sa.Column("scaling_group", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("container_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("terminated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_kernels_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kernels")),
    )
    with op.batch_alter_table("kernels", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_kernels_agent_id"), ["agent_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_kernels_session_id"), ["session_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_kernels_status"), ["status"], unique=False)
        batch_op.create_index(
            "ix_kernels_status_sg_created", ["status", "scaling_group", "created_at"], unique=False
        )

    op.create_table(
        "run_items",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("agent_id", sa.String(length=64), nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("skipped", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration", sa.Float(), server_default="0", nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_items_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_items")),
        sa.UniqueConstraint("run_id", "item_id", name=op.f("uq_run_items_run_id_item_id")),
    )
    with op.batch_alter_table("run_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_items_run_id"), ["run_id"], unique=False)

    op.create_table(
        "session_secrets",
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("ssh_private_key", sa.LargeBinary(), nullable=False),
        sa.Column("ssh_public_key", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_session_secrets_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_session_secrets")),
    )


def downgrade() -> None:

    op.drop_table("session_secrets")
    with op.batch_alter_table("run_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_items_run_id"))

    op.drop_table("run_items")
    with op.batch_alter_table("kernels", schema=None) as batch_op:
        batch_op.drop_index("ix_kernels_status_sg_created")
        batch_op.drop_index(batch_op.f("ix_kernels_status"))
        batch_op.drop_index(batch_op.f("ix_kernels_session_id"))
        batch_op.drop_index(batch_op.f("ix_kernels_agent_id"))

    op.drop_table("kernels")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sessions_status"))

    op.drop_table("sessions")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_status"))
        batch_op.drop_index(batch_op.f("ix_runs_handler"))

    op.drop_table("runs")
    op.drop_table("images")
    op.drop_table("handler_state")
    op.drop_table("agents")
