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

import sqlalchemy as sa

from sokovan.db.base import SqlBase
from sokovan.db.feed import StatusChange, collecting
from sokovan.db.registry import agent_row, occupied_on
from sokovan.db.schema import agents, sessions
from sokovan.records import AgentRow
from sokovan.types import ResourceSlot, SessionId, SessionStatus


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
        """A transaction holding the placement lock of the group's agents and the named ones."""
        changes: list[StatusChange] = []  # moves made under the lock, published once committed
        with self.engine.connect() as conn, collecting(conn, changes):
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
        self.feed.publish(changes)

    def stored_status(self, view: PlacementView, session_id: SessionId) -> SessionStatus | None:
        """The status of a stored session, read in the placement's transaction; None if none."""
        status = view.conn.execute(
            sa.select(sessions.c.status).where(sessions.c.id == session_id)
        ).scalar()
        return None if status is None else SessionStatus(status)


def _locked_agents(
    conn: sa.Connection, scaling_group: str, named: Collection[str]
) -> list[AgentRow]:
    query = sa.select(agents).order_by(agents.c.id)
    in_group = agents.c.scaling_group == scaling_group
    query = query.where(
        sa.or_(in_group, agents.c.id.in_(sorted(set(named)))) if named else in_group
    )
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
