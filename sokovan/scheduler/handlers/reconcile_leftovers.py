"""reconcile_leftovers: destroy the containers of kernels given up on, once their agent answers.

A kernel forced to TERMINATED past its deadline (or on a lost agent) may still run on its
agent, and so may one terminated while its create_kernels was running (the agent answered
the destroy "already gone", then created it). Each leftover is retried with backoff while
its agent is not LOST; destroying a container that is already gone is a success, and either
way the leftover is closed. A create that may still land is waited for first, for the start
timeout, unless its task saw it land (CREATED_AFTER_END).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Final

from sokovan.config import Settings
from sokovan.ports import FanOut, SchedulerStore
from sokovan.records import CREATE_IN_FLIGHT, Leftover
from sokovan.scheduler.deadlines import LOST_AGENT_STATUS
from sokovan.scheduler.handlers.base import (
    FollowUps,
    HandlerContext,
    HandlerDeclaration,
    HandlerRuntime,
    Moved,
    Plan,
    Targets,
)
from sokovan.scheduler.handlers.terminate_sessions import destroy_on_agent
from sokovan.types import (
    JSON,
    AgentBatch,
    AgentId,
    ItemOutcome,
    KernelId,
    KernelStatus,
    Operation,
    RunId,
    utcnow,
)

# Leftover containers of kernels given up on are retried this often once their agent answers.
RECONCILE_INTERVAL_SEC: Final = 30.0

NAME = "reconcile_leftovers"


def _item(leftover: Leftover) -> JSON:
    # No occupied slots: the kernel's slots were freed when it was given up.
    item: JSON = {
        "kernel_id": str(leftover.kernel_id),
        "session_id": str(leftover.session_id),
        "reason": leftover.reason,
        "occupied_slots": {},
    }
    if leftover.attempts:
        item["attempt"] = leftover.attempts + 1
    return item


class ReconcileLeftovers:
    """Destroys leftover containers on agents that answer; closes each leftover once done."""

    def __init__(self, repo: SchedulerStore, fanout: FanOut, settings: Settings) -> None:
        self.repo = repo
        self.fanout = fanout
        self.settings = settings

    async def plan(self, run_id: RunId, scope: Sequence[str] | None, budget: int) -> Plan:
        """Due leftovers of agents not LOST, one destroy batch per agent."""
        now = utcnow()
        # A create that was running when its kernel ended has the start timeout to land; its
        # leftover is destroyed after that (or at once if the create was seen to land).
        landed_by = now - timedelta(seconds=self.settings.start_session_timeout)
        due = [
            d
            for d in await self.repo.leftovers_due(now, budget)
            if d.reason != CREATE_IN_FLIGHT or d.forced_at <= landed_by
        ]
        if scope is not None:
            wanted = {str(s) for s in scope}
            due = [d for d in due if str(d.kernel_id) in wanted or d.agent_id in wanted]
        states = await self.repo.agent_states({d.agent_id for d in due})
        # A lost agent is not asked; its leftovers wait until it is seen again.
        reachable = [d for d in due if states.get(d.agent_id, ("",))[0] != LOST_AGENT_STATUS]
        if not reachable:
            return Plan(requested=0)
        per_agent: dict[AgentId, list[JSON]] = {}
        for d in reachable:
            per_agent.setdefault(d.agent_id, []).append(_item(d))
        batches = [AgentBatch(agent, tuple(items)) for agent, items in per_agent.items()]
        await self.fanout.dispatch(run_id, Operation.DESTROY_KERNELS, batches)
        return Plan(requested=len(reachable), dispatched=True)

    async def complete(
        self, run_id: RunId, outcomes: Sequence[ItemOutcome], moved: Moved
    ) -> FollowUps:
        """Destroyed leftovers close; failed ones wait for their retry."""
        done = [KernelId(uuid.UUID(o.item_id)) for o in outcomes if o.ok and not o.skipped]
        await self.repo.leftovers_destroyed(done)
        failed = {
            KernelId(uuid.UUID(o.item_id)): o.error or "unknown error"
            for o in outcomes
            if not o.ok and not o.skipped and o.detail.get("session_id")
        }
        await self.repo.leftovers_failed(
            failed, base=self.settings.retry_backoff, cap=self.settings.retry_backoff_max
        )
        return ()


def build(ctx: HandlerContext) -> HandlerRuntime:
    """Reconciliation bound to its adapters."""
    handler = ReconcileLeftovers(ctx.repository, ctx.fanout, ctx.settings)
    return HandlerRuntime(DECLARATION, handler.plan, {Operation.DESTROY_KERNELS: handler.complete})


DECLARATION = HandlerDeclaration(
    name=NAME,
    lock_id="LOCKID_SOKOVAN_RECONCILE_LEFTOVERS",
    description="destroys leftover containers of kernels given up on, once their agent answers",
    default_interval=RECONCILE_INTERVAL_SEC,
    targets=Targets(kernels=(KernelStatus.TERMINATED,)),
    transitions={},  # the kernels are TERMINATED already; only their leftovers close
    build=build,
    batches={Operation.DESTROY_KERNELS: destroy_on_agent},
)
