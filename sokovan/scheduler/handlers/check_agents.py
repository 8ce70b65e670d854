"""check_agents: ping every agent, move it ALIVE / UNREACHABLE / LOST, act on LOST agents."""

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
from sokovan.scheduler.liveness import (
    Thresholds,
    check_agents,
    reconcile_leftovers,
    terminate_kernels_of_lost_agents,
)
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
        agent_outcomes, answered = await check_agents(repo, ctx.pool, t)
        lost_outcomes, terminating = await terminate_kernels_of_lost_agents(repo, t)
        leftovers = await reconcile_leftovers(repo, ctx.pool, answered)
        outcomes = [*agent_outcomes, *lost_outcomes, *leftovers]
        notes = []
        if lost_outcomes:
            notes.append(f"{len(lost_outcomes)} kernel(s) of lost agents terminated")
        if leftovers:
            done = sum(1 for o in leftovers if o.ok)
            notes.append(f"{done} of {len(leftovers)} leftover container(s) destroyed")
        follow_ups = [(TERMINATE_HANDLER, [str(s) for s in terminating])] if terminating else []
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
    description="ping every agent; LOST agents' kernels end AGENT_LOST; leftovers destroyed",
    default_interval=C.AGENT_PING_INTERVAL_SEC,
    target="kernels",
    target_statuses=NON_TERMINAL_KERNEL,
    # The kernels of a LOST agent are moved by force_terminate_kernels (one path, which the
    # CLI's `agents remove --force` shares), not by a verdict of this run.
    transitions={},
    build=build,
    budget_unit="kernels",
    give_up=GiveUp(
        deadline_setting="agent_lost_grace",
        then="kernels of an agent LOST this long: TERMINATED (AGENT_LOST), slots freed",
    ),
    interval_setting="agent_ping_interval",
)
