"""One agent batch of a run: done under the run's lease, recorded with its kernel moves.

The batch's outcomes and its kernels' declared moves (TERMINATED for a destroyed kernel,
RUNNING with its container id for a created one, PREPARED for a pulled image) are written in
one transaction, fenced by the run's status: if the worker dies after it, the next run finds
those kernels done and plans only the rest; if the run was abandoned before it, what the
batch did is kept as evidence and the kernels are left to the next run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sokovan.db.recording import KernelMove, Recorded
from sokovan.scheduler.handlers import execute_batch
from sokovan.scheduler.handlers.base import (
    RECORDED_BY_BATCH,
    HandlerContext,
    HandlerRuntime,
    Moved,
    Transition,
    verdict_of,
)
from sokovan.scheduler.leases import kept
from sokovan.scheduler.transitions import promote_sessions, session_ids_of
from sokovan.types import (
    AgentId,
    ItemOutcome,
    KernelId,
    KernelStatus,
    Operation,
    RunId,
    SessionStatus,
)

if TYPE_CHECKING:
    from sokovan.db.ledger import RunLedger
    from sokovan.db.repository import SchedulerRepository
    from sokovan.ports import Claims

log = logging.getLogger(__name__)


class RunOwner(Protocol):
    """What a batch needs of the coordinator: the run's handler, and its lease."""

    claims: Claims
    claim_lifetime: float

    def spec(self, handler: str) -> HandlerRuntime: ...


# Outcome detail: the verdict whose declared move the batch task applied when it recorded it.
MOVED_ON_RECORD = "moved_on_record"


def planned_moves(
    transitions: Mapping[str, Transition], outcomes: Sequence[ItemOutcome]
) -> list[KernelMove]:
    """The declared kernel moves of a batch of outcomes, one per verdict."""
    groups: dict[str, dict[KernelId, ItemOutcome]] = {}
    for outcome in outcomes:
        verdict = verdict_of(outcome, transitions)
        if verdict not in transitions:
            continue
        try:
            kernel_id = KernelId(uuid.UUID(outcome.item_id))
        except ValueError:  # a payload error names no kernel
            continue
        groups.setdefault(verdict, {})[kernel_id] = outcome
    moves = []
    for verdict, group in groups.items():
        move = transitions[verdict]
        values = {} if move.values is None else {k: move.values(o) for k, o in group.items()}
        moves.append(
            KernelMove(verdict, tuple(group), move.kernel, move.source, move.reason, values)
        )
    return moves


async def record_batch(
    coordinator: RunOwner,
    ledger: RunLedger,
    repo: SchedulerRepository,
    run_id: RunId,
    operation: Operation,
    outcomes: Sequence[ItemOutcome],
) -> Recorded:
    """Records a batch's outcomes and moves its kernels in one transaction, if the run lives."""
    run = await asyncio.to_thread(ledger.get_run, run_id)
    transitions = coordinator.spec(run.handler).declaration.transitions
    moves = planned_moves(transitions, outcomes)
    recorded = await asyncio.to_thread(ledger.record_and_move, run_id, outcomes, moves)
    if not recorded.counted:
        log.warning(
            "run %s is %s: %d outcome(s) of a %s batch kept as evidence only",
            run_id,
            run.status,
            len(outcomes),
            operation,
        )
    elif operation == Operation.CREATE_KERNELS and recorded.moved.get("ok"):
        # A session runs once all its kernels do, without waiting for the other agents.
        await promote_sessions(
            repo,
            session_ids_of(outcomes) - session_ids_of(o for o in outcomes if not o.ok),
            KernelStatus.RUNNING,
            SessionStatus.CREATING,
            SessionStatus.RUNNING,
        )
    return recorded


async def run_batch(
    coordinator: RunOwner,
    ledger: RunLedger,
    ctx: HandlerContext,
    run_id: RunId,
    operation: Operation,
    agent_id: AgentId,
    items: Sequence[Mapping[str, Any]],
) -> list[ItemOutcome]:
    """Runs one agent batch of a run, renewing the run's lease, and records it as it ends."""
    run = await asyncio.to_thread(ledger.get_run, run_id)
    lock_id = coordinator.spec(run.handler).lock_id
    if not run.claim_token:
        outcomes = await execute_batch(ctx, operation, agent_id, items)
    else:
        async with kept(coordinator.claims, lock_id, run.claim_token, coordinator.claim_lifetime):
            outcomes = await execute_batch(ctx, operation, agent_id, items)
    try:
        recorded = await record_batch(
            coordinator, ledger, ctx.repository, run_id, operation, outcomes
        )
    except Exception as e:  # the chord body records them again; duplicates are dropped
        log.warning("run %s: outcomes of agent %s not recorded early: %s", run_id, agent_id, e)
        return outcomes
    if not recorded.counted:
        return outcomes
    # The chord body's handler code learns what moved here, as if it had moved it itself.
    verdicts = {str(k): verdict for verdict, ids in recorded.moved.items() for k in ids}
    return [_marked(o, verdicts.get(o.item_id)) for o in outcomes]


def _marked(outcome: ItemOutcome, verdict: str | None) -> ItemOutcome:
    """A recorded outcome as the batch returns it: what was done with it, for the body."""
    detail: dict[str, Any] = {**outcome.detail, RECORDED_BY_BATCH: True}
    if verdict is not None:
        detail[MOVED_ON_RECORD] = verdict
    return dataclasses.replace(outcome, detail=detail)


def unrecorded(outcomes: Sequence[ItemOutcome]) -> list[ItemOutcome]:
    """The outcomes no batch task recorded already (the rest would be no-ops to write)."""
    return [o for o in outcomes if not o.detail.get(RECORDED_BY_BATCH)]


def with_recorded_moves(moved: Moved, outcomes: Sequence[ItemOutcome]) -> Moved:
    """`moved` plus the kernels the batch tasks already moved when they recorded these."""
    merged: dict[str, list[KernelId]] = {v: list(ids) for v, ids in moved.items()}
    # A set beside each list: checking membership in the list made a 10,000-kernel body
    # compare 50 million UUIDs.
    seen: dict[str, set[KernelId]] = {v: set(ids) for v, ids in merged.items()}
    for o in outcomes:
        verdict = o.detail.get(MOVED_ON_RECORD)
        if isinstance(verdict, str):
            kernel_id = KernelId(uuid.UUID(o.item_id))
            known = seen.setdefault(verdict, set())
            if kernel_id not in known:
                known.add(kernel_id)
                merged.setdefault(verdict, []).append(kernel_id)
    return merged
