"""Agent liveness and instance markers in SQL."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from sokovan.db.base import SqlBase
from sokovan.db.schema import agents, kernels
from sokovan.errors import InvalidRequest, UnknownAgent
from sokovan.records import AgentContact
from sokovan.types import (
    TERMINAL_KERNEL_STATUSES,
    AgentId,
    AgentIdentity,
    AgentLiveness,
    KernelId,
    KernelInfo,
    KernelStatus,
    ResourceSlot,
    SessionId,
    utcnow,
)


class LivenessStore(SqlBase):
    """What the liveness check reads and writes about agents."""

    def agent_contacts(self) -> list[AgentContact]:
        """Every registered agent with its liveness."""
        query = sa.select(
            agents.c.id,
            agents.c.status,
            sa.func.coalesce(agents.c.last_contact, agents.c.registered_at),
            agents.c.lost_since,
            agents.c.instance_id,
        ).order_by(agents.c.id)
        with self.engine.connect() as conn:
            return [
                AgentContact(AgentId(a), _liveness(s), _aware(c), lost, inst)
                for a, s, c, lost, inst in conn.execute(query)
            ]

    def record_contact(
        self,
        agent_id: AgentId,
        instance_id: str | None,
        now: datetime,
        started_at: datetime | None = None,
    ) -> None:
        """The agent answered: ALIVE, contact now, and its instance marker recorded."""
        values: dict[str, Any] = {
            "status": str(AgentLiveness.ALIVE),
            "last_contact": now,
            "last_seen": now,
            "lost_since": None,
        }
        with self.engine.begin() as conn:
            conn.execute(agents.update().where(agents.c.id == agent_id).values(**values))
            _record_instance(conn, agent_id, instance_id, now, started_at)

    def record_instance(
        self,
        agent_id: AgentId,
        instance_id: str | None,
        now: datetime,
        started_at: datetime | None = None,
    ) -> None:
        """Records an agent's instance marker; a new one starts a new instance_since.

        instance_since is the start the instance reports (`started_at`), else `now`.
        """
        with self.engine.begin() as conn:
            _record_instance(conn, agent_id, instance_id, now, started_at)

    def mark_liveness(
        self, agent_ids: Collection[AgentId], status: AgentLiveness, now: datetime
    ) -> None:
        """Moves agents to UNREACHABLE or LOST; lost_since keeps the first time it went LOST."""
        if not agent_ids:
            return
        values: dict[str, Any] = {"status": str(status)}
        if status is AgentLiveness.LOST:
            values["lost_since"] = sa.func.coalesce(agents.c.lost_since, now)
        with self.engine.begin() as conn:
            conn.execute(agents.update().where(agents.c.id.in_(list(agent_ids))).values(**values))

    def agents_restarted_since(self, since: datetime) -> dict[AgentId, datetime]:
        """Agents whose current instance started at `since` or later, with that start."""
        query = sa.select(agents.c.id, agents.c.instance_since).where(
            agents.c.instance_since >= since
        )
        with self.engine.connect() as conn:
            return {AgentId(a): _aware(at) for a, at in conn.execute(query)}

    def agent_identities(self, agent_ids: Collection[AgentId]) -> dict[AgentId, AgentIdentity]:
        """What was recorded about each agent's identity; unknown agents are left out."""
        query = sa.select(agents.c.id, agents.c.instance_id, agents.c.instance_since).where(
            agents.c.id.in_(list(agent_ids))
        )
        with self.engine.connect() as conn:
            return {
                AgentId(a): AgentIdentity(
                    AgentId(a), inst, None if since is None else _aware(since)
                )
                for a, inst, since in conn.execute(query)
            }

    def live_kernel_infos(self, agent_ids: Collection[AgentId]) -> list[KernelInfo]:
        """Non-terminal kernels on these agents, with what force-termination records."""
        k = kernels.c
        query = sa.select(k.id, k.session_id, k.agent_id, k.status, k.occupied_slots).where(
            k.agent_id.in_(list(agent_ids)),
            k.status.not_in([str(s) for s in TERMINAL_KERNEL_STATUSES]),
        )
        with self.engine.connect() as conn:
            return [
                KernelInfo(
                    KernelId(kid),
                    SessionId(sid),
                    AgentId(agent),
                    status=KernelStatus(status),
                    occupied_slots=ResourceSlot.from_json(slots),
                )
                for kid, sid, agent, status, slots in conn.execute(query.order_by(k.created_at))
            ]

    def live_kernels_on(self, agent_id: AgentId) -> list[KernelId]:
        """Non-terminal kernels placed on an agent."""
        query = sa.select(kernels.c.id).where(
            kernels.c.agent_id == agent_id,
            kernels.c.status.not_in([str(s) for s in TERMINAL_KERNEL_STATUSES]),
        )
        with self.engine.connect() as conn:
            return [KernelId(k) for k in conn.execute(query).scalars()]

    def remove_agent(self, agent_id: AgentId, force: bool = False) -> list[KernelId]:
        """Unregisters an agent; refuses while kernels live there unless `force`.

        Returns the live kernels it had (left as they are: the caller hands them on).
        """
        live = self.live_kernels_on(agent_id)
        if live and not force:
            raise InvalidRequest(
                f"agent {agent_id!r} still has {len(live)} live kernel(s); use --force to remove"
            )
        with self.engine.begin() as conn:
            gone = conn.execute(agents.delete().where(agents.c.id == agent_id)).rowcount
        if not gone:
            raise UnknownAgent(f"agent {agent_id!r} is not registered")
        return live


def _record_instance(
    conn: sa.Connection,
    agent_id: AgentId,
    instance_id: str | None,
    now: datetime,
    started_at: datetime | None = None,
) -> None:
    # The first marker seen has no earlier instance to tell apart: instance_since stays empty.
    # A different one means the agent restarted: when it started (as it says, never later
    # than now; else now), so the sweep asks about kernels no presence since vouched for. Not
    # a judge of its kernels: an agent id is its node, and only its own answer kills.
    if instance_id is None:
        return
    since = now if started_at is None else min(started_at, now)
    row = agents.c
    conn.execute(
        agents.update()
        .where(row.id == agent_id, row.instance_id.is_(None))
        .values(instance_id=instance_id)
    )
    conn.execute(
        agents.update()
        .where(row.id == agent_id, row.instance_id != instance_id)
        .values(instance_id=instance_id, instance_since=since)
    )


def _liveness(raw: str) -> AgentLiveness:
    try:
        return AgentLiveness(raw)
    except ValueError:
        return AgentLiveness.ALIVE


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=utcnow().tzinfo)
