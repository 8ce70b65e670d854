"""terminate_sessions: destroy the kernels of TERMINATING sessions, one task per agent."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sokovan.scheduler.handlers.base import (
    FollowUps,
    HandlerContext,
    HandlerDeclaration,
    HandlerRuntime,
    Moved,
    Plan,
    Transition,
)
from sokovan.scheduler.transitions import (
    NON_TERMINAL_KERNEL,
    TERMINATE_HANDLER,
    finish_terminated_sessions,
    parse_ids,
    session_ids_of,
)
from sokovan.types import (
    TERMINAL_KERNEL_STATUSES,
    AgentId,
    ItemOutcome,
    KernelStatus,
    Operation,
    RunId,
    SessionId,
    SessionStatus,
)

log = logging.getLogger(__name__)

NAME = TERMINATE_HANDLER
LOCK_ID = "LOCKID_SOKOVAN_TERMINATE_SESSIONS"


async def destroy_on_agent(
    ctx: HandlerContext, agent_id: AgentId, items: Sequence[Mapping[str, Any]]
) -> list[ItemOutcome]:
    """One agent's destroy batch."""
    return await ctx.terminator.destroy_batch(agent_id, items)


def build(ctx: HandlerContext) -> HandlerRuntime:
    """The terminate handler bound to its adapters."""
    repo = ctx.repository

    async def plan(run_id: RunId, scope: Sequence[str] | None, budget: int) -> Plan:
        only = parse_ids(scope)
        sessions = await asyncio.to_thread(
            repo.sessions_in,
            [SessionStatus.TERMINATING],
            limit=budget,
            only=None if only is None else [SessionId(u) for u in only],
        )
        live = [
            dataclasses.replace(
                s, kernels=tuple(k for k in s.kernels if k.status not in TERMINAL_KERNEL_STATUSES)
            )
            for s in sessions
        ]
        empty = [s.id for s in live if not s.kernels]
        if empty:
            await asyncio.to_thread(finish_terminated_sessions, repo, empty)
        live = [s for s in live if s.kernels]
        requested = sum(len(s.kernels) for s in live)
        if not live:
            note = f"{len(empty)} session(s) had no live kernel" if empty else None
            return Plan(requested=0, note=note)
        await ctx.terminator.terminate_sessions_for_handler(live, run_id=run_id)
        return Plan(requested=requested, dispatched=True)

    async def complete(run_id: RunId, outcomes: Sequence[ItemOutcome], moved: Moved) -> FollowUps:
        sessions = session_ids_of(outcomes)
        finished = await asyncio.to_thread(finish_terminated_sessions, repo, sessions)
        failed = [o.item_id for o in outcomes if not o.ok and not o.skipped]
        if failed:
            log.warning(
                "run %s: %d kernel(s) not destroyed, left TERMINATING: %s",
                run_id,
                len(failed),
                ", ".join(failed[:20]),
            )
        log.info(
            "run %s: %d kernel(s) destroyed, %d session(s) terminated",
            run_id,
            len(moved.get("ok", ())),
            len(finished),
        )
        return ()

    return HandlerRuntime(DECLARATION, plan, {Operation.DESTROY_KERNELS: complete})


DECLARATION = HandlerDeclaration(
    name=NAME,
    lock_id=LOCK_ID,
    description="destroys the kernels of TERMINATING sessions, one task per agent",
    default_interval=5.0,
    interval_setting="terminate_interval",
    target="sessions",
    target_statuses=(SessionStatus.TERMINATING,),
    transitions={
        "ok": Transition(KernelStatus.TERMINATED, NON_TERMINAL_KERNEL),
        # A kernel that never had an agent has nothing to destroy.
        "skipped": Transition(KernelStatus.CANCELLED, NON_TERMINAL_KERNEL),
    },
    build=build,
    batches={Operation.DESTROY_KERNELS: destroy_on_agent},
    budget_unit="sessions",
)
