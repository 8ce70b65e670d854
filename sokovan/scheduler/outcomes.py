"""One agent batch of a run: done under the run's lease, recorded with its kernel moves.

The batch's outcomes and its kernels' declared moves (TERMINATED for a destroyed kernel,
RUNNING with its container id for a created one, PREPARED for a pulled image) are written in
one transaction, fenced by the run's status: if the worker dies after it, the next run finds
those kernels done and plans only the rest; if the run was abandoned before it, what the
batch did is kept as evidence and the kernels are left to the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from sokovan.deadletter import failed_outcomes
from sokovan.errors import describe_error
from sokovan.records import CREATED_AFTER_END, Leftover
from sokovan.scheduler.handlers import execute_batch
from sokovan.scheduler.handlers.base import HandlerContext, HandlerRuntime, Transition
from sokovan.scheduler.handlers.reconcile_leftovers import NAME as RECONCILE
from sokovan.scheduler.leases import kept
from sokovan.scheduler.transitions import is_kernel_id, promote_sessions, session_ids_of
from sokovan.types import (
    TERMINAL_KERNEL_STATUSES,
    AgentBatch,
    AgentId,
    ItemOutcome,
    KernelId,
    KernelMove,
    KernelStatus,
    Operation,
    Recorded,
    RunId,
    RunRecord,
    RunTrigger,
    SessionId,
    SessionStatus,
    Verdict,
    utcnow,
)

if TYPE_CHECKING:
    from sokovan.ports import Claims, HandlerKicker, Ledger, SchedulerStore

log = logging.getLogger(__name__)

# A batch records its outcomes and kernel moves itself; a database busy for a moment (SQLite's
# write lock under a burst) gets this many tries, RECORD_RETRY_SEC apart and growing, before
# the task fails and the run's next tick re-plans the batch's kernels from SQL.
RECORD_ATTEMPTS: Final = 4
RECORD_RETRY_SEC: Final = 0.5
# Kernels whose created container is to be destroyed once more: ended, or ending.
ENDING: Final = frozenset({*TERMINAL_KERNEL_STATUSES, KernelStatus.TERMINATING})


class RunOwner(Protocol):
    """What a batch needs of the coordinator: the run's handler, and its lease."""

    claims: Claims
    claim_lifetime: float
    kicker: HandlerKicker

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
    repo: SchedulerStore,
    run_id: RunId,
    operation: Operation,
    outcomes: Sequence[ItemOutcome],
) -> tuple[Recorded, list[ItemOutcome]]:
    """Records a batch's outcomes and moves its kernels in one transaction, if the run lives;
    returns what recording did and the outcomes marked with their moves."""
    run = await ledger.get_run(run_id)
    transitions = coordinator.spec(run.handler).declaration.transitions
    recorded, marked = await record_outcomes(ledger, transitions, run_id, outcomes)
    await after_recording(coordinator.kicker, repo, run, operation, outcomes, recorded)
    return recorded, marked


async def after_recording(
    kicker: HandlerKicker,
    repo: SchedulerStore,
    run: RunRecord,
    operation: Operation,
    outcomes: Sequence[ItemOutcome],
    recorded: Recorded,
) -> None:
    """What follows a recorded batch: a note if the run was over, sessions that now run,
    and containers created for kernels that had ended meanwhile destroyed."""
    if operation == Operation.CREATE_KERNELS:
        await _destroy_created_after_end(kicker, repo, outcomes, recorded)
    if not recorded.counted:
        log.warning(
            "run %s is %s: %d outcome(s) of a %s batch kept as evidence only",
            run.id,
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


async def _destroy_created_after_end(
    kicker: HandlerKicker,
    repo: SchedulerStore,
    outcomes: Sequence[ItemOutcome],
    recorded: Recorded,
) -> None:
    """A kernel the agent created after its session was terminated (or failed) has a container
    the destroy may have missed: an agent answers a destroy during a create with "already
    gone". Such kernels are remembered (CREATED_AFTER_END: their slots stay held) and
    reconcile_leftovers is kicked to destroy them; destroying twice is harmless."""
    moved = {str(k) for k in recorded.moved.get(Verdict.OK, ())}
    created = {
        o.item_id: o
        for o in outcomes
        if o.ok and o.item_id not in moved and o.agent_id and o.detail.get("session_id")
    }
    ids = [KernelId(uuid.UUID(i)) for i in created if is_kernel_id(i)]
    if not ids:
        return
    ended = [k for k, s in (await repo.kernel_statuses(ids)).items() if s in ENDING]
    if not ended:
        return
    now = utcnow()
    leftovers = [
        Leftover(
            k,
            SessionId(uuid.UUID(str(created[str(k)].detail["session_id"]))),
            AgentId(str(created[str(k)].agent_id)),
            CREATED_AFTER_END,
            now,
            0,
            None,
        )
        for k in ended
    ]
    log.warning(
        "kernel(s) %s were created while or after they were terminated; destroying them",
        sorted(map(str, ended)),
    )
    await repo.remember_leftovers(leftovers, reopen=True)
    try:
        await kicker.kick(RECONCILE, RunTrigger.EVENT, [str(k) for k in ended])
    except Exception as e:  # reconcile_leftovers' own tick picks them up
        log.warning("could not kick %s for %s: %s", RECONCILE, ended, e)


async def run_batch(
    coordinator: RunOwner,
    ledger: Ledger,
    ctx: HandlerContext,
    run_id: RunId,
    operation: Operation,
    agent_id: AgentId,
    items: Sequence[Mapping[str, Any]],
) -> list[ItemOutcome]:
    """Runs one agent batch of a run and records it as it ends (see run_batches)."""
    batch = AgentBatch(agent_id, tuple(dict(item) for item in items))
    return await run_batches(coordinator, ledger, ctx, run_id, operation, [batch])


async def run_batches(
    coordinator: RunOwner,
    ledger: Ledger,
    ctx: HandlerContext,
    run_id: RunId,
    operation: Operation,
    batches: Sequence[AgentBatch],
) -> list[ItemOutcome]:
    """Runs several agents' batches of a run at once, renewing the run's lease, and records
    what has ended whenever it ends: the agents that finish together share one transaction.

    Each agent's batch stands alone: an agent whose batch raises fails its own items only.
    The batch is the only writer of its outcomes and their kernel moves: the chord body only
    counts them. Recording is tried a few times (a busy database); if it still fails the
    task fails, the run ends failed, and its next run re-plans these kernels from SQL.
    """
    run = await ledger.get_run(run_id)
    lease: contextlib.AbstractAsyncContextManager[Any] = contextlib.nullcontext()
    if run.claim_token:
        lock_id = coordinator.spec(run.handler).lock_id
        lease = kept(coordinator.claims, lock_id, run.claim_token, coordinator.claim_lifetime)
    transitions = coordinator.spec(run.handler).declaration.transitions
    marked: dict[int, list[ItemOutcome]] = {}
    async with lease:
        running = {
            asyncio.ensure_future(_execute_alone(ctx, operation, batch)): index
            for index, batch in enumerate(batches)
        }
        try:
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                ended = {running.pop(t): t.result() for t in done}
                recorded = await _record_retrying(
                    coordinator.kicker,
                    ledger,
                    ctx.repository,
                    transitions,
                    run,
                    operation,
                    ended,
                    batches,
                )
                marked.update(recorded)
        finally:
            for pending in running:
                pending.cancel()
    return [o for index in range(len(batches)) for o in marked.get(index, [])]


async def _execute_alone(
    ctx: HandlerContext, operation: Operation, batch: AgentBatch
) -> list[ItemOutcome]:
    """One agent's batch; whatever it raises fails its own items, never another agent's."""
    try:
        return await execute_batch(ctx, operation, batch.agent_id, batch.items)
    except Exception as e:
        error = f"{operation} batch failed: {describe_error(e)}"
        log.warning("agent %s: %s", batch.agent_id, error)
        return failed_outcomes(str(batch.agent_id), batch.items, error)


async def _record_retrying(
    kicker: HandlerKicker,
    ledger: Ledger,
    repo: SchedulerStore,
    transitions: Mapping[Verdict, Transition],
    run: RunRecord,
    operation: Operation,
    ended: Mapping[int, list[ItemOutcome]],
    batches: Sequence[AgentBatch],
) -> dict[int, list[ItemOutcome]]:
    """Records the ended batches in one transaction, a few tries; each batch's outcomes back
    marked with their moves."""
    outcomes = [o for index in sorted(ended) for o in ended[index]]
    agents = ", ".join(str(batches[index].agent_id) for index in sorted(ended))
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            marked = await _record_ended(
                kicker, ledger, repo, transitions, run, operation, outcomes
            )
            break
        except Exception as e:
            if attempt == RECORD_ATTEMPTS:
                raise
            log.warning(
                "run %s: recording the outcomes of agent(s) %s failed (attempt %d): %s",
                run.id,
                agents,
                attempt,
                e,
            )
            await asyncio.sleep(RECORD_RETRY_SEC * attempt)
    out: dict[int, list[ItemOutcome]] = {}
    position = 0
    for index in sorted(ended):
        out[index] = marked[position : position + len(ended[index])]
        position += len(ended[index])
    return out


async def _record_ended(
    kicker: HandlerKicker,
    ledger: Ledger,
    repo: SchedulerStore,
    transitions: Mapping[Verdict, Transition],
    run: RunRecord,
    operation: Operation,
    outcomes: Sequence[ItemOutcome],
) -> list[ItemOutcome]:
    recorded, marked = await record_outcomes(ledger, transitions, run.id, outcomes)
    await after_recording(kicker, repo, run, operation, outcomes, recorded)
    return marked
