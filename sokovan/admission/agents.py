"""The public agent tasks' bodies: register, cordon, uncordon, drain; refusals are results."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sokovan.admission.parse import parse_call
from sokovan.admission.refusal import Refusal, from_error
from sokovan.admission.schemas import (
    AgentPayload,
    DrainAgentPayload,
    RegisterAgentPayload,
)
from sokovan.errors import UnknownAgent
from sokovan.ports import SchedulerStore
from sokovan.records import AgentRow
from sokovan.scheduler.coordinator import Coordinator
from sokovan.scheduler.handlers import schedule_sessions
from sokovan.scheduler.maintenance import DrainMode, cordon, drain, uncordon
from sokovan.scheduler.transitions import TERMINATE_HANDLER
from sokovan.types import JSON, AgentId, ResourceSlot, RunTrigger, utcnow

log = logging.getLogger(__name__)


def registration(payload: RegisterAgentPayload) -> AgentRow:
    """The agents-table row a valid registration describes."""
    return AgentRow(
        id=AgentId(payload.agent_id),
        rpc_addr=payload.rpc_addr,
        scaling_group=payload.scaling_group,
        capacity=ResourceSlot({k: Decimal(v) for k, v in payload.capacity.items()}),
    )


def maintenance_doc(row: AgentRow) -> JSON:
    """An agent's maintenance state as the tasks and `agents list --json` show it."""
    return {
        "agent_id": row.id,
        "schedulable": row.schedulable,
        "maintenance": row.maintenance,
        "drain_deadline": row.drain_deadline.isoformat() if row.drain_deadline else None,
    }


def _refused(task: str, refusal: Refusal) -> JSON:
    log.warning("%s refused: %s", task, refusal.error)
    return refusal.to_json()


class AgentTasks:
    """What `sokovan.agents.register|cordon|uncordon|drain` do, given their raw arguments."""

    def __init__(self, repository: SchedulerStore, coordinator: Coordinator) -> None:
        self.repository = repository
        self.coordinator = coordinator

    async def register(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> JSON:
        """Registers (or refreshes) an agent; the pending queue gets a run if it waits."""
        payload = parse_call(RegisterAgentPayload, args, kwargs)
        if isinstance(payload, Refusal):
            return _refused("agents register", payload)
        row = registration(payload)
        await self.repository.upsert_agent(row)
        await self._schedule_pending()
        return {"agent_id": row.id, "rpc_addr": row.rpc_addr, "registered": True}

    async def cordon(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> JSON:
        """Stops new placements on an agent; its sessions run on."""
        payload = parse_call(AgentPayload, args, kwargs)
        if isinstance(payload, Refusal):
            return _refused("agents cordon", payload)
        try:
            row = await cordon(self.repository, AgentId(payload.agent_id))
        except UnknownAgent as e:
            return _refused("agents cordon", from_error(e, "agent_id"))
        return maintenance_doc(row)

    async def uncordon(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> JSON:
        """Lets placement use an agent again; the pending queue gets a run."""
        payload = parse_call(AgentPayload, args, kwargs)
        if isinstance(payload, Refusal):
            return _refused("agents uncordon", payload)
        try:
            row = await uncordon(self.repository, AgentId(payload.agent_id))
        except UnknownAgent as e:
            return _refused("agents uncordon", from_error(e, "agent_id"))
        await self._schedule_pending()
        return maintenance_doc(row)

    async def drain(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> JSON:
        """Cordons an agent and ends its sessions by the deadline (at once, or at it)."""
        payload = parse_call(DrainAgentPayload, args, kwargs)
        if isinstance(payload, Refusal):
            return _refused("agents drain", payload)
        mode = DrainMode.WAIT if payload.wait_for_sessions else DrainMode.TERMINATE
        deadline = utcnow() + timedelta(seconds=payload.deadline_seconds)
        try:
            done = await drain(self.repository, AgentId(payload.agent_id), mode, deadline)
        except UnknownAgent as e:
            return _refused("agents drain", from_error(e, "agent_id"))
        run_id = None
        if done.terminating:
            scope = [str(s) for s in done.terminating]
            run_id = (await self.coordinator.run(TERMINATE_HANDLER, RunTrigger.API, scope)).run_id
        return {
            **maintenance_doc(done.agent),
            "maintenance": "drained" if done.done else done.agent.maintenance,
            "mode": str(mode),
            "sessions": len(done.live_sessions),
            "terminating": len(done.terminating),
            "run_id": run_id,
        }

    async def _schedule_pending(self) -> None:
        if await self.repository.pending_count():
            await self.coordinator.run(schedule_sessions.NAME, RunTrigger.API)
