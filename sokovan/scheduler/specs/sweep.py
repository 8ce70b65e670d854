"""sweep_stale_kernels: reap RUNNING kernels that their agent confirms are gone."""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sokovan.db.repository import SchedulerRepository
from sokovan.scheduler.coordinator import HandlerSpec, Plan
from sokovan.scheduler.handlers.sweep_stale_kernels import SweepStaleKernelsKernelHandler
from sokovan.scheduler.specs.common import parse_ids, request_termination
from sokovan.scheduler.specs.terminate import NAME as TERMINATE
from sokovan.types import (
    ItemOutcome,
    KernelExecutionResult,
    KernelId,
    KernelInfo,
    KernelStatus,
    RunId,
    SessionId,
)

log = logging.getLogger(__name__)

STALE_KERNEL = "STALE_KERNEL"
ABNORMAL_TERMINATION = "ABNORMAL_TERMINATION"


def sweep_spec(repo: SchedulerRepository, handler: SweepStaleKernelsKernelHandler) -> HandlerSpec:
    """The stale-kernel sweep as the coordinator runs it (synchronously, no fan-out)."""

    async def plan(run_id: RunId, scope: Sequence[str] | None, budget: int) -> Plan:
        with _collector_paused():
            return await judge_and_mark(scope, budget)

    async def judge_and_mark(scope: Sequence[str] | None, budget: int) -> Plan:
        only = parse_ids(scope)
        kernels = await asyncio.to_thread(
            repo.kernels_to_sweep,
            [KernelStatus.RUNNING],
            limit=budget,
            only=None if only is None else [KernelId(u) for u in only],
        )
        by_group: dict[str, list[KernelInfo]] = {}
        for k in kernels:
            by_group.setdefault(k.scaling_group, []).append(k)
        outcomes: list[ItemOutcome] = []
        bulk_ok = 0
        notes: list[str] = []
        sessions: set[SessionId] = set()
        for group, members in by_group.items():
            result = await handler.execute(group, members)
            if result.brake:
                notes.append(f"{group}: brake: {result.brake}")
            dead = [f.kernel_id for f in result.failures]
            moved = await asyncio.to_thread(
                repo.transition_kernels,
                dead,
                KernelStatus.TERMINATED,
                [KernelStatus.RUNNING],
                status_info=STALE_KERNEL,
            )
            moved_set = set(moved)
            sessions.update(k.session_id for k in members if k.id in moved_set)
            group_outcomes = _outcomes(members, result, moved_set)
            outcomes.extend(group_outcomes)
            bulk_ok += len(members) - len(group_outcomes)
        reaped = [o for o in outcomes if o.detail.get("verdict") == "dead"]
        follow_ups: list[tuple[str, Sequence[str] | None]] = []
        if sessions:
            moved_sessions = await request_termination(repo, sorted(sessions), ABNORMAL_TERMINATION)
            follow_ups.append((TERMINATE, [str(s) for s in moved_sessions] or None))
        if kernels:
            notes.insert(0, f"{len(reaped)} stale kernel(s) terminated")
        return Plan(
            requested=len(kernels),
            outcomes=outcomes,
            bulk_ok=bulk_ok,
            note="; ".join(notes) or None,
            follow_ups=follow_ups,
        )

    return HandlerSpec(handler.name, handler.lock_id or handler.name, plan)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Holds off Python's cyclic garbage collector for the length of one sweep."""
    # A sweep loads every RUNNING kernel at once: a burst of 100k+ objects that live until the
    # run ends and hold no cycles. Each automatic collection meanwhile walks them all again,
    # which took most of the judging time; reference counting frees them all the same.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _outcomes(
    members: Sequence[KernelInfo], result: KernelExecutionResult, moved: set[KernelId]
) -> list[ItemOutcome]:
    """One outcome per suspected kernel, carrying the evidence of both stages."""
    agents = {k.id: k.agent_id for k in members}
    out: list[ItemOutcome] = []
    for info in result.failures:
        evidence = dict(result.evidence.get(str(info.kernel_id), {}))
        evidence["verdict"] = "dead" if info.kernel_id in moved else "dead, already moved on"
        out.append(
            ItemOutcome(str(info.kernel_id), agents.get(info.kernel_id), ok=True, detail=evidence)
        )
    for info in result.skipped:
        evidence = dict(result.evidence.get(str(info.kernel_id), {}))
        evidence["verdict"] = info.reason or "unverified"
        out.append(
            ItemOutcome(
                str(info.kernel_id),
                agents.get(info.kernel_id),
                ok=False,
                error=info.reason,
                detail=evidence,
                skipped=True,
            )
        )
    # Every other suspect was found alive: a success with a row; the unsuspected get none.
    # Walking the evidence, not the successes, keeps this to the few suspects of a large run.
    decided = {o.item_id for o in out}
    for key, seen in result.evidence.items():
        if key not in decided:
            out.append(
                ItemOutcome(
                    key,
                    agents.get(KernelId(uuid.UUID(key))),
                    ok=True,
                    detail={**seen, "verdict": "alive"},
                )
            )
    return out
