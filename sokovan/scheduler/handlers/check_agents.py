"""check_agents: ping every agent, move it ALIVE / UNREACHABLE / LOST, act on LOST agents,
and carry every unfinished drain on (sokovan.scheduler.maintenance)."""

from __future__ import annotations

from collections.abc import Sequence

from sokovan import constants as C
from sokovan.config import Settings
from sokovan.ports import AgentClientPool, SchedulerStore
from sokovan.scheduler.handlers.base import (
    GiveUp,
    HandlerContext,
    HandlerDeclaration,
    HandlerRuntime,
    Plan,
    Targets,
)
from sokovan.scheduler.handlers.reconcile_leftovers import NAME as RECONCILE
from sokovan.scheduler.liveness import (
    Thresholds,
    check_agents,
    hand_on_lost_agents,
    returned_with_leftovers,
)
from sokovan.scheduler.maintenance import DRAIN_HANDLER, continue_drains
from sokovan.scheduler.transitions import NON_TERMINAL_KERNEL, TERMINATE_HANDLER
from sokovan.types import RunId

NAME = DRAIN_HANDLER
LOCK_ID = "LOCKID_SOKOVAN_CHECK_AGENTS"


class CheckAgents:
    """Pings agents, hands LOST agents' kernels on, and carries drains on."""

    def __init__(self, repo: SchedulerStore, pool: AgentClientPool, settings: Settings) -> None:
        self.repo = repo
        self.pool = pool
        assert DECLARATION.give_up is not None
        self.thresholds = Thresholds(
            ping_timeout=settings.agent_ping_timeout,
            unreachable_after=settings.agent_unreachable_after,
            lost_after=settings.agent_lost_after,
            lost_grace=DECLARATION.give_up.deadline(settings),
        )

    async def plan(self, run_id: RunId, scope: Sequence[str] | None, budget: int) -> Plan:
        """One ping per agent; what follows from each agent's state."""
        agent_outcomes, returned = await check_agents(self.repo, self.pool, self.thresholds)
        lost_outcomes, sessions = await hand_on_lost_agents(self.repo, self.thresholds)
        reconcile = await returned_with_leftovers(self.repo, returned)
        drains = await continue_drains(self.repo)
        draining = sorted({s for d in drains for s in d.terminating})
        notes = []
        follow_ups: list[tuple[str, Sequence[str] | None]] = []
        if sessions or draining:
            if sessions:
                notes.append(f"{len(lost_outcomes)} kernel(s) of lost agents to the deadline path")
            if draining:
                notes.append(f"{len(draining)} session(s) of draining agents to end")
            follow_ups.append((TERMINATE_HANDLER, [str(s) for s in {*sessions, *draining}]))
        if reconcile:
            notes.append(f"{len(reconcile)} leftover(s) to destroy on agents that answer again")
            follow_ups.append((RECONCILE, [str(k) for k in reconcile]))
        outcomes = [*agent_outcomes, *lost_outcomes]
        return Plan(
            requested=len(outcomes),
            outcomes=outcomes,
            note="; ".join(notes) or None,
            follow_ups=follow_ups,
        )


def build(ctx: HandlerContext) -> HandlerRuntime:
    """The liveness check bound to its adapters."""
    return HandlerRuntime(DECLARATION, CheckAgents(ctx.repository, ctx.pool, ctx.settings).plan)


DECLARATION = HandlerDeclaration(
    name=NAME,
    lock_id=LOCK_ID,
    description="ping every agent; a LOST agent's kernels take the deadline path (AGENT_LOST); "
    "unfinished drains carry on (AGENT_DRAINED)",
    default_interval=C.AGENT_PING_INTERVAL_SEC,
    targets=Targets(kernels=NON_TERMINAL_KERNEL),
    # Nothing moves in this run: a LOST agent's kernels are given up by terminate_sessions'
    # deadline path, their leftovers destroyed by reconcile_leftovers.
    transitions={},
    build=build,
    give_up=GiveUp(
        deadline_setting="agent_lost_grace",
        then="kernels of an agent LOST this long take the TERMINATING deadline path (AGENT_LOST)",
    ),
    interval_setting="agent_ping_interval",
)
