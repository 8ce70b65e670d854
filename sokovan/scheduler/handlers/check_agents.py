"""check_agents: ping every agent, move it ALIVE / UNREACHABLE / LOST, act on LOST agents,
and carry every unfinished drain on (sokovan.scheduler.maintenance)."""

from __future__ import annotations

from collections.abc import Sequence

from sokovan import constants as C
from sokovan.scheduler.handlers.base import (
    GiveUp,
    HandlerContext,
    HandlerDeclaration,
    HandlerRuntime,
    Plan,
)
from sokovan.scheduler.handlers.reconcile_leftovers import NAME as RECONCILE
from sokovan.scheduler.liveness import (
    Thresholds,
    check_agents,
    hand_on_lost_agents,
    returned_with_leftovers,
)
from sokovan.scheduler.maintenance import continue_drains
from sokovan.scheduler.transitions import NON_TERMINAL_KERNEL, TERMINATE_HANDLER
from sokovan.types import RunId

NAME = "check_agents"
LOCK_ID = "LOCKID_SOKOVAN_CHECK_AGENTS"


def thresholds(ctx: HandlerContext) -> Thresholds:
    s = ctx.settings
    return Thresholds(
        ping_timeout=s.agent_ping_timeout,
        unreachable_after=s.agent_unreachable_after,
        lost_after=s.agent_lost_after,
        lost_grace=s.agent_lost_grace,
    )


def build(ctx: HandlerContext) -> HandlerRuntime:
    """The liveness check bound to its adapters."""
    repo = ctx.repository

    async def plan(run_id: RunId, scope: Sequence[str] | None, budget: int) -> Plan:
        t = thresholds(ctx)
        agent_outcomes, returned = await check_agents(repo, ctx.pool, t)
        lost_outcomes, sessions = await hand_on_lost_agents(repo, t)
        reconcile = await returned_with_leftovers(repo, returned)
        drains = await continue_drains(repo)
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

    return HandlerRuntime(DECLARATION, plan)


DECLARATION = HandlerDeclaration(
    name=NAME,
    lock_id=LOCK_ID,
    description="ping every agent; a LOST agent's kernels take the deadline path (AGENT_LOST); "
    "unfinished drains carry on (AGENT_DRAINED)",
    default_interval=C.AGENT_PING_INTERVAL_SEC,
    target="kernels",
    target_statuses=NON_TERMINAL_KERNEL,
    # Nothing moves in this run: a LOST agent's kernels are given up by terminate_sessions'
    # deadline path, their leftovers destroyed by reconcile_leftovers.
    transitions={},
    build=build,
    budget_unit="kernels",
    give_up=GiveUp(
        deadline_setting="agent_lost_grace",
        then="kernels of an agent LOST this long take the TERMINATING deadline path (AGENT_LOST)",
    ),
    interval_setting="agent_ping_interval",
)
