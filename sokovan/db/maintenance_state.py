"""Agent maintenance in SQL: cordon, a drain's intent and its end.

The intent is a row's state, not a message: whichever worker looks next (the drain task, or
check_agents on its tick) reads what remains on the agent and carries the drain on.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from sokovan.db.base import SqlBase
from sokovan.db.registry import agent_row
from sokovan.db.schema import agents, kernels, sessions
from sokovan.errors import UnknownAgent
from sokovan.records import AgentRow
from sokovan.types import TERMINAL_KERNEL_STATUSES, AgentId, SessionId, SessionStatus, utcnow


def _live_on(agent_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(
        kernels.c.agent_id == agent_id,
        kernels.c.status.not_in([str(s) for s in TERMINAL_KERNEL_STATUSES]),
    )


class AgentMaintenance(SqlBase):
    """Cordon and drain state of agents, and the sessions a drain has left to end."""

    def _update_agent(self, agent_id: AgentId, **values: Any) -> AgentRow:
        with self.engine.begin() as conn:
            moved = conn.execute(
                agents.update().where(agents.c.id == agent_id).values(**values)
            ).rowcount
            row = conn.execute(sa.select(agents).where(agents.c.id == agent_id)).mappings().first()
        if not moved or row is None:
            raise UnknownAgent(f"agent {agent_id!r} is not registered", field="agent_id")
        return agent_row(row)

    def cordon_agent(self, agent_id: AgentId) -> AgentRow:
        """Stops new placements on the agent; its kernels stay as they are."""
        return self._update_agent(agent_id, schedulable=False)

    def uncordon_agent(self, agent_id: AgentId) -> AgentRow:
        """Lets placement use the agent again; a drain in progress stops where it is."""
        return self._update_agent(
            agent_id, schedulable=True, drain_mode=None, drain_deadline=None, drained_at=None
        )

    def start_drain(self, agent_id: AgentId, mode: str, deadline: datetime) -> AgentRow:
        """Cordons the agent and records the drain's intent (a new drain replaces an old one)."""
        return self._update_agent(
            agent_id, schedulable=False, drain_mode=mode, drain_deadline=deadline, drained_at=None
        )

    def draining_agents(self) -> list[AgentRow]:
        """Agents with a drain not yet finished."""
        query = sa.select(agents).where(
            agents.c.drain_mode.is_not(None), agents.c.drained_at.is_(None)
        )
        with self.engine.connect() as conn:
            return [agent_row(r) for r in conn.execute(query.order_by(agents.c.id)).mappings()]

    def finish_drain(self, agent_id: AgentId) -> bool:
        """Marks the drain done if the agent holds no live kernel (checked in the same update)."""
        empty = ~sa.select(kernels.c.id).where(_live_on(agent_id)).exists()
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    agents.update()
                    .where(
                        agents.c.id == agent_id,
                        agents.c.drain_mode.is_not(None),
                        agents.c.drained_at.is_(None),
                        empty,
                    )
                    .values(drained_at=utcnow())
                ).rowcount
            )

    def sessions_on_agent(self, agent_id: AgentId) -> dict[SessionId, SessionStatus]:
        """Sessions with a live kernel on the agent, and their statuses."""
        query = (
            sa.select(sessions.c.id, sessions.c.status)
            .where(sessions.c.id.in_(sa.select(kernels.c.session_id).where(_live_on(agent_id))))
            .order_by(sessions.c.created_at)
        )
        with self.engine.connect() as conn:
            return {SessionId(sid): SessionStatus(st) for sid, st in conn.execute(query)}

    def live_kernel_count(self, agent_id: AgentId) -> int:
        """Non-terminal kernels on the agent."""
        query = sa.select(sa.func.count()).select_from(kernels).where(_live_on(agent_id))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def bring_deadlines_forward(self, session_ids: Collection[SessionId], when: datetime) -> int:
        """Sets each session's forced deadline to `when` unless it already has an earlier one."""
        changed = 0
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(sessions.c.id, sessions.c.status_data).where(
                    sessions.c.id.in_(list(session_ids))
                )
            ).all()
            for sid, data in rows:
                current = dict(data or {})
                at = current.get("deadline_at")
                if at and datetime.fromisoformat(str(at)) <= when:
                    continue
                conn.execute(
                    sessions.update()
                    .where(sessions.c.id == sid)
                    .values(status_data={**current, "deadline_at": when.isoformat()})
                )
                changed += 1
        return changed
