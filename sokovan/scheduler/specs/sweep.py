"""sweep_stale_kernels: reap RUNNING kernels that their agent confirms are gone."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

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
        only = parse_ids(scope)
        kernels = await asyncio.to_thread(
            repo.kernels_in,
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
    for info in result.successes:
        seen = result.evidence.get(str(info.kernel_id))
        if seen is not None:  # suspected in stage 1, alive in stage 2
            out.append(
                ItemOutcome(
                    str(info.kernel_id),
                    agents.get(info.kernel_id),
                    ok=True,
                    detail={**seen, "verdict": "alive"},
                )
            )
    return out
