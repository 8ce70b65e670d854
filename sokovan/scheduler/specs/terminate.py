"""terminate_sessions: destroy the kernels of TERMINATING sessions, one task per agent."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence

from sokovan.db.repository import SchedulerRepository
from sokovan.scheduler.coordinator import HandlerSpec, Plan
from sokovan.scheduler.specs.common import (
    NON_TERMINAL_KERNEL,
    finish_terminated_sessions,
    kernel_ids,
    parse_ids,
    session_ids_of,
)
from sokovan.scheduler.terminator import SessionTerminator
from sokovan.types import (
    TERMINAL_KERNEL_STATUSES,
    ItemOutcome,
    KernelStatus,
    Operation,
    RunId,
    SessionId,
    SessionStatus,
)

log = logging.getLogger(__name__)

NAME = "terminate_sessions"
LOCK_ID = "LOCKID_SOKOVAN_TERMINATE_SESSIONS"


def terminate_spec(repo: SchedulerRepository, terminator: SessionTerminator) -> HandlerSpec:
    """The terminate handler as the coordinator runs it."""

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
        await terminator.terminate_sessions_for_handler(live, run_id=run_id)
        return Plan(requested=requested, dispatched=True)

    async def complete(
        run_id: RunId, outcomes: Sequence[ItemOutcome]
    ) -> Sequence[tuple[str, Sequence[str] | None]]:
        destroyed = kernel_ids(o for o in outcomes if o.ok and not o.skipped)
        unplaced = kernel_ids(o for o in outcomes if o.skipped)
        await asyncio.to_thread(
            repo.transition_kernels, destroyed, KernelStatus.TERMINATED, NON_TERMINAL_KERNEL
        )
        await asyncio.to_thread(
            repo.transition_kernels, unplaced, KernelStatus.CANCELLED, NON_TERMINAL_KERNEL
        )
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
            len(destroyed),
            len(finished),
        )
        return ()

    return HandlerSpec(NAME, LOCK_ID, plan, {Operation.DESTROY_KERNELS: complete})
