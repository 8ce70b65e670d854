"""Tables: agents, images, sessions, kernels, secrets, and the run ledger."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a timezone-aware column")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

TS = UTCDateTime()

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("rpc_addr", sa.String(255), nullable=False),
    sa.Column("scaling_group", sa.String(64), nullable=False, server_default="default"),
    sa.Column("status", sa.String(16), nullable=False, server_default="ALIVE"),
    sa.Column("runtime", sa.String(32), nullable=True),
    sa.Column("capacity", sa.JSON, nullable=False, default=dict),
    sa.Column("public_key", sa.LargeBinary, nullable=True),
    sa.Column("registered_at", TS, nullable=False),
    sa.Column("last_seen", TS, nullable=False),
    # Liveness (ALIVE / UNREACHABLE / LOST lives in `status`): the last answered ping, and
    # when the agent turned LOST (its kernels' grace period runs from then).
    sa.Column("last_contact", TS, nullable=True),
    sa.Column("lost_since", TS, nullable=True),
    # The agent's own instance (boot) marker, and since when it has been the one recorded.
    sa.Column("instance_id", sa.String(64), nullable=True),
    sa.Column("instance_since", TS, nullable=True),
    # Maintenance: a cordoned agent (schedulable false) gets no new kernel. A drain's intent
    # (mode "terminate" or "wait", and its deadline) stays here until the agent is empty,
    # so whichever worker runs next finishes it; drained_at says when it was.
    sa.Column("schedulable", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("drain_mode", sa.String(16), nullable=True),
    sa.Column("drain_deadline", TS, nullable=True),
    sa.Column("drained_at", TS, nullable=True),
)


images = sa.Table(
    "images",
    metadata,
    sa.Column("canonical", sa.String(255), primary_key=True),
    sa.Column("architecture", sa.String(32), nullable=False, server_default="x86_64"),
    sa.Column("registry_name", sa.String(128), nullable=False, server_default="cr.backend.ai"),
    sa.Column(
        "registry_url", sa.String(255), nullable=False, server_default="https://cr.backend.ai"
    ),
    sa.Column("is_local", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("digest", sa.String(128), nullable=False, server_default=""),
    sa.Column("labels", sa.JSON, nullable=False, default=dict),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, server_default=""),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("status_info", sa.String(64), nullable=True),
    sa.Column("status_data", sa.JSON, nullable=False, default=dict),
    sa.Column("scaling_group", sa.String(64), nullable=False, server_default="default"),
    sa.Column("cluster_mode", sa.String(16), nullable=False, server_default="single-node"),
    sa.Column("network_type", sa.String(16), nullable=False, server_default="volatile"),
    sa.Column("network_id", sa.String(255), nullable=True),
    sa.Column("user_uuid", sa.Uuid, nullable=False),
    sa.Column("access_key", sa.String(64), nullable=False, server_default=""),
    sa.Column("environ", sa.JSON, nullable=False, default=dict),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("status_changed_at", TS, nullable=False),
    sa.Column("terminated_at", TS, nullable=True),
    # The pending queue: oldest first per scaling group.
    sa.Index("ix_sessions_status_sg_created", "status", "scaling_group", "created_at"),
)

kernels = sa.Table(
    "kernels",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column(
        "session_id",
        sa.Uuid,
        sa.ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("agent_id", sa.String(64), nullable=True, index=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("status_info", sa.String(64), nullable=True),
    sa.Column("status_data", sa.JSON, nullable=False, default=dict),
    sa.Column("image", sa.String(255), nullable=False, server_default=""),
    sa.Column("architecture", sa.String(32), nullable=False, server_default="x86_64"),
    sa.Column("requested_slots", sa.JSON, nullable=False, default=dict),
    sa.Column("occupied_slots", sa.JSON, nullable=False, default=dict),
    sa.Column("cluster_role", sa.String(16), nullable=False, server_default="main"),
    sa.Column("cluster_idx", sa.Integer, nullable=False, server_default="1"),
    sa.Column("local_rank", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cluster_hostname", sa.String(64), nullable=False, server_default="main1"),
    sa.Column("scaling_group", sa.String(64), nullable=False, server_default="default"),
    sa.Column("container_id", sa.String(128), nullable=True),
    # False from placement until the kernel moves to CREATING, just before create_kernels is
    # sent: a kernel never sent to an agent needs no destroy when it is terminated.
    sa.Column("create_sent", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("status_changed_at", TS, nullable=False),
    sa.Column("terminated_at", TS, nullable=True),
    sa.Index("ix_kernels_status_sg_created", "status", "scaling_group", "created_at"),
)

session_secrets = sa.Table(
    "session_secrets",
    metadata,
    sa.Column(
        "session_id", sa.Uuid, sa.ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("ssh_private_key", sa.LargeBinary, nullable=False),  # Fernet-encrypted
    sa.Column("ssh_public_key", sa.Text, nullable=False),
    sa.Column("created_at", TS, nullable=False),
)

# Secret environ values, Fernet-encrypted. A row is written unbound (session_id NULL) by a
# client that sends only its reference, or bound at submission; the worker reads a
# session's rows when it calls the agent.
environ_secrets = sa.Table(
    "environ_secrets",
    metadata,
    sa.Column("ref", sa.String(36), primary_key=True),
    sa.Column("session_id", sa.Uuid, nullable=True, index=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("created_at", TS, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("handler", sa.String(64), nullable=False, index=True),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("operation", sa.String(32), nullable=True),
    sa.Column("requested", sa.Integer, nullable=False, server_default="0"),
    sa.Column("succeeded", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("skipped", sa.Integer, nullable=False, server_default="0"),
    sa.Column("started_at", TS, nullable=False),
    sa.Column("finished_at", TS, nullable=True),
    sa.Column("deadline_at", TS, nullable=True),
    sa.Column("fanout_id", sa.String(64), nullable=True),
    sa.Column("claim_token", sa.String(64), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("scope", sa.JSON, nullable=True),
    sa.Column("note", sa.Text, nullable=True),
)

run_items = sa.Table(
    "run_items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "run_id",
        sa.Integer,
        sa.ForeignKey("runs.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("item_id", sa.String(64), nullable=False),
    sa.Column("agent_id", sa.String(64), nullable=True),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("skipped", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("duration", sa.Float, nullable=False, server_default="0"),
    sa.Column("evidence", sa.JSON, nullable=False, default=dict),
    sa.Column("recorded_at", TS, nullable=False),
    # False: reached the run after it stopped being live; kept as evidence, never counted.
    sa.Column("counted", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.UniqueConstraint("run_id", "item_id"),
)

handler_state = sa.Table(
    "handler_state",
    metadata,
    sa.Column("handler", sa.String(64), primary_key=True),
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("changed_at", TS, nullable=False),
)

# Reclaim policies an operator set per scaling group (`sokovan reclaim set`): each replaces
# the group's entry of SOKOVAN_RECLAIM_POLICIES; `policy` is that entry's JSON object.
reclaim_policies = sa.Table(
    "reclaim_policies",
    metadata,
    sa.Column("scaling_group", sa.String(64), primary_key=True),
    sa.Column("policy", sa.Text, nullable=False),
    sa.Column("changed_at", TS, nullable=False),
)

# Kernels given up on (forced to TERMINATED past a deadline, or on a lost agent) whose
# container may still exist: reconciliation destroys it once the agent answers again.
leftover_kernels = sa.Table(
    "leftover_kernels",
    metadata,
    sa.Column("kernel_id", sa.Uuid, primary_key=True),
    sa.Column("session_id", sa.Uuid, nullable=False),
    sa.Column("agent_id", sa.String(64), nullable=False, index=True),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("forced_at", TS, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", TS, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("destroyed_at", TS, nullable=True, index=True),
)

# Cluster SSH keypairs made ahead of demand; a row is deleted as it is handed out, so a
# key serves one session only.
keypair_pool = sa.Table(
    "keypair_pool",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key_type", sa.String(16), nullable=False),
    sa.Column("ssh_private_key", sa.LargeBinary, nullable=False),  # Fernet-encrypted
    sa.Column("ssh_public_key", sa.Text, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Index("ix_keypair_pool_key_type_id", "key_type", "id"),
)


def status_among(column: sa.ColumnElement[str], allowed: Collection[str]) -> sa.ColumnElement[bool]:
    """`column IN allowed` for rows picked by their key: a filter, never the index searched.

    Beside `id IN (...)`, SQLite without statistics searches the status index (one value there
    is every RUNNING kernel) instead of the primary key: a 250-kernel move read 100,000 rows.
    `status || ''` cannot use that index, so the key is searched and the status checked.
    """
    return column.concat("").in_(list(allowed))
