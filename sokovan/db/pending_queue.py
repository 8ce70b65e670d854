"""The pending queue in SQL: PENDING sessions by scaling group, oldest first.

A PENDING session's kernels are stored without an agent; placing it sets their agents and
moves session and kernels to SCHEDULED in the placement transaction (sokovan.db.placement),
each move guarded by `status = PENDING`, so a concurrent cancel and a placement never both win.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from sokovan.db.base import SqlBase
from sokovan.db.feed import StatusChange, collecting, note
from sokovan.db.recording import IN_CHUNK
from sokovan.db.schema import kernels, sessions
from sokovan.types import (
    AgentId,
    ClusterMode,
    KernelId,
    KernelStatus,
    ResourceSlot,
    SessionId,
    SessionStatus,
    utcnow,
)

# status_data key of a PENDING session's named agents, kept until it is placed.
REQUESTED_AGENTS = "requested_agents"


@dataclass(frozen=True, slots=True)
class PendingSession:
    """What placing a waiting session needs: its shape and its kernels in cluster order."""

    id: SessionId
    scaling_group: str
    cluster_mode: ClusterMode
    kernel_ids: tuple[KernelId, ...]
    slots: ResourceSlot  # per kernel (a session's kernels ask for the same slots)
    agents: tuple[AgentId, ...]
    image: str


def pending_groups(conn: sa.Connection) -> list[str]:
    """Scaling groups with at least one PENDING session."""
    query = sa.select(sessions.c.scaling_group).where(
        sessions.c.status == str(SessionStatus.PENDING)
    )
    return sorted({str(r[0]) for r in conn.execute(query.distinct())})


def pending_in(conn: sa.Connection, scaling_group: str, limit: int = 0) -> list[PendingSession]:
    """The group's PENDING sessions in queue order (oldest submission first)."""
    query = (
        sa.select(sessions.c.id, sessions.c.cluster_mode, sessions.c.status_data)
        .where(
            sessions.c.status == str(SessionStatus.PENDING),
            sessions.c.scaling_group == scaling_group,
        )
        .order_by(sessions.c.created_at, sessions.c.id)
    )
    if limit:
        query = query.limit(limit)
    rows = list(conn.execute(query))
    if not rows:
        return []
    krows = conn.execute(
        sa.select(kernels.c.session_id, kernels.c.id, kernels.c.requested_slots, kernels.c.image)
        .where(kernels.c.session_id.in_([r.id for r in rows]))
        .order_by(kernels.c.cluster_idx)
    )
    by_session: dict[uuid.UUID, list[Any]] = {}
    for k in krows:
        by_session.setdefault(k.session_id, []).append(k)
    return [
        PendingSession(
            id=SessionId(r.id),
            scaling_group=scaling_group,
            cluster_mode=ClusterMode(r.cluster_mode),
            kernel_ids=tuple(KernelId(k.id) for k in by_session.get(r.id, [])),
            slots=ResourceSlot.from_json(by_session[r.id][0].requested_slots)
            if by_session.get(r.id)
            else ResourceSlot(),
            agents=tuple(AgentId(a) for a in (r.status_data or {}).get(REQUESTED_AGENTS, [])),
            image=str(by_session[r.id][0].image) if by_session.get(r.id) else "",
        )
        for r in rows
    ]


def assign_pending(
    conn: sa.Connection, session_id: SessionId, placed: Mapping[KernelId, AgentId]
) -> bool:
    """Gives a PENDING session's kernels their agents and moves it to SCHEDULED."""
    now = utcnow()
    moved = conn.execute(
        sessions.update()
        .where(sessions.c.id == session_id, sessions.c.status == str(SessionStatus.PENDING))
        .values(status=str(SessionStatus.SCHEDULED), status_changed_at=now)
    ).rowcount
    if not moved:
        return False
    note(conn, [session_id], str(SessionStatus.SCHEDULED), now)
    for kernel_id, agent_id in placed.items():
        conn.execute(
            kernels.update()
            .where(kernels.c.id == kernel_id, kernels.c.status == str(KernelStatus.PENDING))
            .values(agent_id=agent_id, status=str(KernelStatus.SCHEDULED), status_changed_at=now)
        )
    return True


def _cancel_values(reason: str) -> dict[str, Any]:
    now = utcnow()
    return {
        "status": str(SessionStatus.CANCELLED),
        "status_info": reason,
        "status_changed_at": now,
        "terminated_at": now,
    }


class PendingQueue(SqlBase):
    """PENDING sessions: cancelled without an agent call, and their queue positions."""

    def cancel_pending(self, session_ids: Collection[SessionId], reason: str) -> list[SessionId]:
        """Cancels the sessions still PENDING (they hold no agent), in one transaction; returns
        those it cancelled (one placed meanwhile, or not PENDING, is left out)."""
        values = _cancel_values(reason)
        ids = list(dict.fromkeys(session_ids))
        cancelled: list[SessionId] = []
        changes: list[StatusChange] = []
        with self.engine.begin() as conn, collecting(conn, changes):
            for start in range(0, len(ids), IN_CHUNK):
                chunk = ids[start : start + IN_CHUNK]
                moved = [
                    SessionId(s)
                    for s in conn.execute(
                        sessions.update()
                        .where(
                            sessions.c.id.in_(chunk),
                            sessions.c.status == str(SessionStatus.PENDING),
                        )
                        .values(**values)
                        .returning(sessions.c.id)
                    ).scalars()
                ]
                if not moved:
                    continue
                conn.execute(
                    kernels.update()
                    .where(
                        kernels.c.session_id.in_(moved),
                        kernels.c.status == str(KernelStatus.PENDING),
                    )
                    .values(**values)
                )
                cancelled.extend(moved)
            if cancelled:
                note(conn, cancelled, values["status"], values["status_changed_at"], reason)
        self.feed.publish(changes)
        return cancelled

    def pending_count(self) -> int:
        """PENDING sessions in every scaling group."""
        query = sa.select(sa.func.count()).where(sessions.c.status == str(SessionStatus.PENDING))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def queue_positions(self) -> dict[SessionId, int]:
        """Every PENDING session's place in its scaling group's queue, from 1."""
        query = (
            sa.select(sessions.c.id, sessions.c.scaling_group)
            .where(sessions.c.status == str(SessionStatus.PENDING))
            .order_by(sessions.c.created_at, sessions.c.id)
        )
        seen: dict[str, int] = {}
        out: dict[SessionId, int] = {}
        with self.engine.connect() as conn:
            for sid, group in conn.execute(query):
                seen[group] = seen.get(group, 0) + 1
                out[SessionId(sid)] = seen[group]
        return out
