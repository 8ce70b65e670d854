"""Registered agents and image configs in SQL."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from typing import Any

import sqlalchemy as sa

from sokovan.db.base import SqlBase
from sokovan.db.schema import agents, images, kernels, leftover_kernels
from sokovan.errors import UnknownAgent
from sokovan.records import SLOT_HOLDING_LEFTOVERS, AgentRow
from sokovan.types import (
    TERMINAL_KERNEL_STATUSES,
    AgentId,
    ImageConfig,
    ResourceSlot,
    utcnow,
)


class AgentsAndImages(SqlBase):
    """Agents (capacity, address, liveness) and the images sessions may use."""

    def upsert_agent(self, agent: AgentRow, *, keep_status: bool = False) -> None:
        """Registers an agent or refreshes its address, capacity and heartbeat.

        With `keep_status`, a known agent keeps its liveness (the liveness check owns it).
        """
        now = utcnow()
        values = {
            "id": agent.id,
            "rpc_addr": agent.rpc_addr,
            "scaling_group": agent.scaling_group,
            "status": agent.status,
            "runtime": agent.runtime,
            "capacity": ResourceSlot(agent.capacity).to_json(),
            "public_key": agent.public_key,
            "registered_at": now,
            "last_seen": now,
        }
        kept = ("id", "registered_at", "status") if keep_status else ("id", "registered_at")
        update = {k: v for k, v in values.items() if k not in kept}
        stmt = self._insert()(agents).values(**values)
        stmt = stmt.on_conflict_do_update(index_elements=["id"], set_=update)
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def mark_agents(self, agent_ids: Collection[str], status: str) -> int:
        if not agent_ids:
            return 0
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    agents.update().where(agents.c.id.in_(list(agent_ids))).values(status=status)
                ).rowcount
            )

    def list_agents(self, scaling_group: str | None = None) -> list[AgentRow]:
        query = sa.select(agents).order_by(agents.c.id)
        if scaling_group:
            query = query.where(agents.c.scaling_group == scaling_group)
        with self.engine.connect() as conn:
            return [agent_row(r) for r in conn.execute(query).mappings()]

    def agents_by_ids(self, agent_ids: list[str]) -> list[AgentRow | None]:
        """The rows of these agents in one query, in order; None for one not registered."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(agents).where(agents.c.id.in_(set(agent_ids))))
            found = {r["id"]: agent_row(r) for r in rows.mappings()}
        return [found.get(a) for a in agent_ids]

    def get_agent(self, agent_id: str) -> AgentRow:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(agents).where(agents.c.id == agent_id)).mappings().first()
        if row is None:
            raise UnknownAgent(f"agent {agent_id!r} is not registered")
        return agent_row(row)

    def occupied_by_agent(self) -> dict[str, ResourceSlot]:
        """Slots held per agent (see holds_slots)."""
        query = sa.select(kernels.c.agent_id, kernels.c.requested_slots).where(
            kernels.c.agent_id.is_not(None), holds_slots()
        )
        out: dict[str, ResourceSlot] = {}
        with self.engine.connect() as conn:
            for agent_id, slots in conn.execute(query):
                out[agent_id] = out.get(agent_id, ResourceSlot()) + ResourceSlot.from_json(slots)
        return out

    def occupied_by_agent_grouped(self) -> dict[str, ResourceSlot]:
        """occupied_by_agent, counted in SQL: one row per agent and distinct slot set.

        Kernels of a cluster mostly share their slots, so this reads a handful of rows
        where occupied_by_agent reads one per live kernel.
        """
        with self.engine.connect() as conn:
            return occupied_on(conn)

    def add_image(self, image: ImageConfig) -> None:
        values = {
            "canonical": image.canonical,
            "architecture": image.architecture,
            "registry_name": image.registry_name,
            "registry_url": image.registry_url,
            "is_local": image.is_local,
            "digest": image.digest,
            "labels": dict(image.labels),
        }
        stmt = self._insert()(images).values(**values)
        stmt = stmt.on_conflict_do_update(index_elements=["canonical"], set_=values)
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def image_configs(self, names: Iterable[str] | None = None) -> dict[str, ImageConfig]:
        query = sa.select(images)
        if names is not None:
            query = query.where(images.c.canonical.in_(list(set(names))))
        with self.engine.connect() as conn:
            return {
                r["canonical"]: ImageConfig(
                    canonical=r["canonical"],
                    architecture=r["architecture"],
                    registry_name=r["registry_name"],
                    registry_url=r["registry_url"],
                    is_local=r["is_local"],
                    digest=r["digest"],
                    labels=dict(r["labels"] or {}),
                )
                for r in conn.execute(query).mappings()
            }


def holds_slots() -> sa.ColumnElement[bool]:
    """A kernel holds its slots while it is not terminal, and after that while a create may
    have left its container on the agent (an open leftover of SLOT_HOLDING_LEFTOVERS)."""
    container_may_run = sa.select(leftover_kernels.c.kernel_id).where(
        leftover_kernels.c.destroyed_at.is_(None),
        leftover_kernels.c.reason.in_(sorted(SLOT_HOLDING_LEFTOVERS)),
    )
    return sa.or_(
        kernels.c.status.not_in([str(s) for s in TERMINAL_KERNEL_STATUSES]),
        kernels.c.id.in_(container_may_run),
    )


def occupied_on(
    conn: sa.Connection, agent_ids: Collection[str] | None = None
) -> dict[str, ResourceSlot]:
    """Slots held per agent (see holds_slots), read on `conn` (inside its transaction)."""
    slots_text = sa.cast(kernels.c.requested_slots, sa.Text)
    query = (
        sa.select(kernels.c.agent_id, slots_text, sa.func.count())
        .where(kernels.c.agent_id.is_not(None), holds_slots())
        .group_by(kernels.c.agent_id, slots_text)
    )
    if agent_ids is not None:
        query = query.where(kernels.c.agent_id.in_(list(agent_ids)))
    out: dict[str, ResourceSlot] = {}
    for agent_id, text, count in conn.execute(query):
        slots = ResourceSlot.from_json(json.loads(text) if text else None)
        total = ResourceSlot({k: v * count for k, v in slots.items()})
        out[agent_id] = out.get(agent_id, ResourceSlot()) + total
    return out


def agent_row(r: Any) -> AgentRow:
    """An AgentRow from a row of the agents table."""
    return AgentRow(
        id=AgentId(r["id"]),
        rpc_addr=r["rpc_addr"],
        scaling_group=r["scaling_group"],
        status=r["status"],
        runtime=r["runtime"],
        capacity=ResourceSlot.from_json(r["capacity"]),
        public_key=r["public_key"],
        schedulable=bool(r["schedulable"]),
        drain_mode=r["drain_mode"],
        drain_deadline=r["drain_deadline"],
        drained_at=r["drained_at"],
    )
