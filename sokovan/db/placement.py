"""Placement under a lock: free capacity is read and reserved in one transaction.

Occupied slots are not a counter: they are the requested slots of the agent's live kernels,
so a kernel frees its slots exactly once, when it reaches a terminal status, and no agent's
occupancy can go negative. What must be atomic is reading free capacity and inserting the
kernels that use it; this module holds the agents' placement lock for that whole transaction
(PostgreSQL: their rows FOR UPDATE; SQLite: BEGIN IMMEDIATE, the database's write lock).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from sokovan.db.agents import AgentRow, agent_row, occupied_on
from sokovan.db.base import SqlBase
from sokovan.db.ledger import utcnow
from sokovan.db.schema import agents, kernels, sessions
from sokovan.types import KernelStatus, ResourceSlot, SessionId, SessionStatus


@dataclass(frozen=True, slots=True)
class PlacementView:
    """What a placement may read and write while it holds the lock."""

    conn: sa.Connection
    agents: list[AgentRow]
    occupied: dict[str, ResourceSlot]
    # PENDING sessions of the scaling group already waiting: a newcomer queues behind them.
    pending: int


class Placement(SqlBase):
    """The placement lock and the reads made under it."""

    @contextmanager
    def placement(self, scaling_group: str, named: Collection[str] = ()) -> Iterator[PlacementView]:
        """A transaction holding the placement lock of the named agents (else the group's)."""
        with self.engine.connect() as conn:
            try:
                if conn.dialect.name == "sqlite":
                    # SQLite has no row locks; its write lock, taken up front, serialises
                    # placements across worker processes (readers are not blocked in WAL).
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                rows = _locked_agents(conn, scaling_group, named)
                view = PlacementView(
                    conn=conn,
                    agents=rows,
                    occupied=occupied_on(conn, [a.id for a in rows]),
                    pending=_pending_count(conn, scaling_group),
                )
                yield view
                conn.commit()
            except BaseException:
                conn.rollback()
                raise


def _locked_agents(
    conn: sa.Connection, scaling_group: str, named: Collection[str]
) -> list[AgentRow]:
    query = sa.select(agents).order_by(agents.c.id)
    if named:
        query = query.where(agents.c.id.in_(sorted(set(named))))
    else:
        query = query.where(agents.c.scaling_group == scaling_group)
    if conn.dialect.name == "postgresql":
        # Ordered by id, so two placements lock overlapping agents in the same order.
        query = query.with_for_update()
    return [agent_row(r) for r in conn.execute(query).mappings()]


def _pending_count(conn: sa.Connection, scaling_group: str) -> int:
    query = sa.select(sa.func.count()).where(
        sessions.c.status == str(SessionStatus.PENDING),
        sessions.c.scaling_group == scaling_group,
    )
    return int(conn.execute(query).scalar() or 0)


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

    def cancel_pending(self, session_id: SessionId, reason: str) -> bool:
        """Cancels a session still PENDING (it holds no agent); False if it was not PENDING."""
        values = _cancel_values(reason)
        with self.engine.begin() as conn:
            moved = conn.execute(
                sessions.update()
                .where(
                    sessions.c.id == session_id,
                    sessions.c.status == str(SessionStatus.PENDING),
                )
                .values(**values)
            ).rowcount
            if moved:
                conn.execute(
                    kernels.update()
                    .where(
                        kernels.c.session_id == session_id,
                        kernels.c.status == str(KernelStatus.PENDING),
                    )
                    .values(**values)
                )
        return bool(moved)

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
