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
from typing import TYPE_CHECKING, Any, Final, Protocol

from sokovan.scheduler.handlers import execute_batch
from sokovan.scheduler.handlers.base import HandlerContext, HandlerRuntime, Transition
from sokovan.scheduler.leases import kept
from sokovan.scheduler.transitions import promote_sessions, session_ids_of
from sokovan.types import (
    AgentId,
    ItemOutcome,
    KernelId,
    KernelMove,
    KernelStatus,
    Operation,
    Recorded,
    RunId,
    SessionStatus,
    Verdict,
)

if TYPE_CHECKING:
    from sokovan.ports import Claims, Ledger, SessionStore

log = logging.getLogger(__name__)

# A batch records its outcomes and kernel moves itself; a database busy for a moment (SQLite's
# write lock under a burst) gets this many tries, RECORD_RETRY_SEC apart and growing, before
# the task fails and the run's next tick re-plans the batch's kernels from SQL.
RECORD_ATTEMPTS: Final = 4
RECORD_RETRY_SEC: Final = 0.5


class RunOwner(Protocol):
    """What a batch needs of the coordinator: the run's handler, and its lease."""

    claims: Claims
    claim_lifetime: float

    def spec(self, handler: str) -> HandlerRuntime: ...


def planned_moves(
    transitions: Mapping[Verdict, Transition], outcomes: Sequence[ItemOutcome]
) -> list[KernelMove]:
    """The declared kernel moves of a batch of outcomes, one per verdict."""
    groups: dict[Verdict, dict[KernelId, ItemOutcome]] = {}
    for outcome in outcomes:
        if outcome.verdict not in transitions:
            continue
        try:
            kernel_id = KernelId(uuid.UUID(outcome.item_id))
        except ValueError:  # a payload error names no kernel
            continue
        groups.setdefault(outcome.verdict, {})[kernel_id] = outcome
    moves = []
    for verdict, group in groups.items():
        move = transitions[verdict]
        values = {} if move.values is None else {k: move.values(o) for k, o in group.items()}
        moves.append(
            KernelMove(verdict, tuple(group), move.kernel, move.source, move.reason, values)
        )
    return moves


def with_moves(outcomes: Sequence[ItemOutcome], recorded: Recorded) -> list[ItemOutcome]:
    """The outcomes as recorded: each says whether its declared move was applied."""
    applied = {str(k) for ids in recorded.moved.values() for k in ids}
    return [dataclasses.replace(o, moved=o.item_id in applied) for o in outcomes]


async def record_outcomes(
    ledger: Ledger,
    transitions: Mapping[Verdict, Transition],
    run_id: RunId,
    outcomes: Sequence[ItemOutcome],
) -> tuple[Recorded, list[ItemOutcome]]:
    """Records outcomes and applies their declared moves in one transaction, if the run lives;
    the outcomes come back marked with what moved."""
    moves = planned_moves(transitions, outcomes)
    recorded = await ledger.record_and_move(run_id, outcomes, moves)
    return recorded, with_moves(outcomes, recorded)


async def record_batch(
    coordinator: RunOwner,
    ledger: Ledger,
    repo: SessionStore,
    run_id: RunId,
    operation: Operation,
    outcomes: Sequence[ItemOutcome],
) -> tuple[Recorded, list[ItemOutcome]]:
    """Records a batch's outcomes and moves its kernels in one transaction, if the run lives;
    returns what recording did and the outcomes marked with their moves."""
    run = await ledger.get_run(run_id)
    transitions = coordinator.spec(run.handler).declaration.transitions
    recorded, marked = await record_outcomes(ledger, transitions, run_id, outcomes)
    if not recorded.counted:
        log.warning(
            "run %s is %s: %d outcome(s) of a %s batch kept as evidence only",
            run_id,
            run.status,
            len(outcomes),
            operation,
        )
    elif operation == Operation.CREATE_KERNELS and recorded.moved.get(Verdict.OK):
        # A session runs once all its kernels do, without waiting for the other agents.
        await promote_sessions(
            repo,
            session_ids_of(outcomes) - session_ids_of(o for o in outcomes if not o.ok),
            KernelStatus.RUNNING,
            SessionStatus.CREATING,
            SessionStatus.RUNNING,
        )
    return recorded, marked


async def run_batch(
    coordinator: RunOwner,
    ledger: Ledger,
    ctx: HandlerContext,
    run_id: RunId,
    operation: Operation,
    agent_id: AgentId,
    items: Sequence[Mapping[str, Any]],
) -> list[ItemOutcome]:
    """Runs one agent batch of a run, renewing the run's lease, and records it as it ends.

    The batch is the only writer of its outcomes and their kernel moves: the chord body only
    counts them. Recording is tried a few times (a busy database); if it still fails the
    task fails, the run ends failed, and its next run re-plans these kernels from SQL.
    """
    run = await ledger.get_run(run_id)
    lock_id = coordinator.spec(run.handler).lock_id
    if not run.claim_token:
        outcomes = await execute_batch(ctx, operation, agent_id, items)
    else:
        async with kept(coordinator.claims, lock_id, run.claim_token, coordinator.claim_lifetime):
            outcomes = await execute_batch(ctx, operation, agent_id, items)
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            _, marked = await record_batch(
                coordinator, ledger, ctx.repository, run_id, operation, outcomes
            )
            return marked
        except Exception as e:
            if attempt == RECORD_ATTEMPTS:
                raise
            log.warning(
                "run %s: recording agent %s's outcomes failed (attempt %d): %s",
                run_id,
                agent_id,
                attempt,
                e,
            )
            await asyncio.sleep(RECORD_RETRY_SEC * attempt)
    raise AssertionError("unreachable")
