"""Agent batches grouped into a few tasks: the grouping's bounds, and one task running several
agents' batches (run_batches) where each agent stands alone and what ends is recorded at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sokovan.scheduler.handlers import terminate_sessions
from sokovan.scheduler.outcomes import run_batches
from sokovan.stubs.ledger import InMemoryLedger
from sokovan.stubs.store import InMemoryStore, KernelMoves
from sokovan.types import (
    AgentBatch,
    AgentId,
    ItemOutcome,
    KernelId,
    KernelMove,
    KernelStatus,
    Operation,
    Recorded,
    RunId,
    RunStatus,
    RunTrigger,
)
from tasks.canvas import agent_batches_of, group_batches
from tests.terminate_stubs import TerminateStubs


def _batches(sizes: Sequence[int]) -> list[AgentBatch]:
    return [
        AgentBatch(AgentId(f"a{i}"), tuple({"kernel_id": str(j)} for j in range(n)))
        for i, n in enumerate(sizes)
    ]


def _agents(groups: list[list[AgentBatch]]) -> list[str]:
    return sorted(str(b.agent_id) for g in groups for b in g)


def test_few_agents_keep_a_task_each() -> None:
    """Two agents make two tasks of one agent: a poison batch still takes only its agent."""
    groups = group_batches(_batches([3, 3]), max_tasks=16, agents_per_task=64)
    assert [[str(b.agent_id) for b in g] for g in sorted(groups, key=str)] == [["a0"], ["a1"]]


def test_a_hundred_agents_fill_the_task_bound_evenly() -> None:
    """100 agents of 100 kernels in at most 16 tasks: 6 or 7 agents each, every agent once."""
    batches = _batches([100] * 100)
    groups = group_batches(batches, max_tasks=16, agents_per_task=64)
    assert len(groups) == 16
    assert {len(g) for g in groups} == {6, 7}
    assert _agents(groups) == sorted(str(b.agent_id) for b in batches)


def test_thousands_of_agents_make_more_tasks_not_larger_ones() -> None:
    """5,000 agents with at most 64 a task: 79 tasks, none over 64 agents."""
    groups = group_batches(_batches([10] * 5000), max_tasks=16, agents_per_task=64)
    assert len(groups) == 79
    assert max(len(g) for g in groups) <= 64
    assert len(_agents(groups)) == 5000


def test_uneven_agents_are_balanced_by_items() -> None:
    """One agent of 90 kernels and nine of 10 in two tasks: 90 alone beside the nine."""
    groups = group_batches(_batches([10] * 9 + [90]), max_tasks=2, agents_per_task=64)
    sizes = sorted(sum(len(b.items) for b in g) for g in groups)
    assert sizes == [90, 90]


def test_no_batches_make_no_task() -> None:
    assert group_batches([], max_tasks=16, agents_per_task=64) == []


def test_task_arguments_of_both_shapes_are_read() -> None:
    """A group message, a one-agent message of the earlier shape, and keyword arguments."""
    grouped = agent_batches_of([[["a1", [1]], ["a2", []], "junk"]], {})
    assert grouped == [("a1", [1]), ("a2", []), ("junk", None)]
    assert agent_batches_of(["a1", [1]], {}) == [("a1", [1])]
    assert agent_batches_of([], {"agent_id": "a1", "items": [2]}) == [("a1", [2])]
    assert agent_batches_of([], {}) == [(None, None)]


class CountingLedger(InMemoryLedger):
    """Records which agents each recording transaction held."""

    def __init__(self, store: InMemoryStore) -> None:
        super().__init__(KernelMoves(store))
        self.transactions: list[set[str]] = []
        self.recorded = asyncio.Event()  # set after each transaction

    async def record_and_move(
        self, run_id: RunId, outcomes: Sequence[ItemOutcome], moves: Sequence[KernelMove] = ()
    ) -> Recorded:
        self.transactions.append({str(o.agent_id) for o in outcomes})
        try:
            return await super().record_and_move(run_id, outcomes, moves)
        finally:
            self.recorded.set()


def grouped_stubs() -> TerminateStubs[CountingLedger]:
    """Two agents that answer at once and a slow one, every agent's batch in one task."""
    return TerminateStubs(CountingLedger, {"fast1": 0.0, "fast2": 0.0, "slow": 0.3}, one_task=True)


async def test_sc_te_004_agents_of_one_task_fail_alone_and_count_per_agent() -> None:
    """SC-TE-004, SC-TE-005 with several agents in one task.

    Given one task holding four agents' batches: two that answer, one slow, and one that
    cannot be reached (its kernels' agent is not in the pool), when the terminate run goes,
    then every reachable kernel is destroyed and TERMINATED, the unreachable agent's kernels
    alone fail (and stay TERMINATING), the counts are per kernel, and the fast agents were
    recorded in a transaction before the slow agent's, without it.
    """
    s = grouped_stubs()
    _, fast = s.add_session(["fast1", "fast1", "fast2"])
    _, slow = s.add_session(["slow", "slow"])
    _, gone = s.add_session(["gone", "gone"])

    report = await s.coordinator.run(terminate_sessions.NAME, RunTrigger.BEAT)

    assert report.run_id is not None and report.status == RunStatus.PARTIAL
    run = await s.ledger.get_run(report.run_id)
    assert (run.requested, run.succeeded, run.failed) == (7, 5, 2)
    items = s.ledger.runs[report.run_id].items
    assert {items[str(k)].agent_id for k in gone} == {"gone"}
    assert all(not items[str(k)].ok for k in gone)
    assert all(items[str(k)].ok for k in [*fast, *slow])
    assert {k: s.store.kernels[k].status for k in [*fast, *slow, *gone]} == {
        **{k: KernelStatus.TERMINATED for k in [*fast, *slow]},
        **{k: KernelStatus.TERMINATING for k in gone},
    }
    slow_at = next(i for i, agents in enumerate(s.ledger.transactions) if "slow" in agents)
    assert s.ledger.transactions[slow_at] == {"slow"}
    assert {"fast1", "fast2"} <= set().union(*s.ledger.transactions[:slow_at])


async def test_a_task_cut_short_leaves_its_recorded_agents_done() -> None:
    """SC-CR on stubs: a task cancelled while its slow agent still works (its worker stops)
    keeps the fast agents' kernels TERMINATED and their outcomes counted; the slow agent's
    kernels are untouched, left to the redelivered message or the next run."""
    s = grouped_stubs()
    _, fast = s.add_session(["fast1", "fast2"])
    _, slow = s.add_session(["slow"])
    run_id = await s.ledger.open_run(terminate_sessions.NAME, RunTrigger.BEAT)
    batches = [
        AgentBatch(AgentId(str(s.store.kernels[k].agent_id)), (_destroy_item(s, k),))
        for k in [*fast, *slow]
    ]
    assert s.chord.ctx is not None
    task = asyncio.ensure_future(
        run_batches(
            s.coordinator, s.ledger, s.chord.ctx, run_id, Operation.DESTROY_KERNELS, batches
        )
    )
    while not any("slow" not in t for t in s.ledger.transactions):
        s.ledger.recorded.clear()
        await asyncio.wait_for(s.ledger.recorded.wait(), timeout=10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    assert {k: s.store.kernels[k].status for k in [*fast, *slow]} == {
        **{k: KernelStatus.TERMINATED for k in fast},
        slow[0]: KernelStatus.TERMINATING,
    }
    assert set(s.ledger.runs[run_id].items) == {str(k) for k in fast}


def _destroy_item(s: TerminateStubs[CountingLedger], kernel_id: KernelId) -> dict[str, object]:
    kernel = s.store.kernels[kernel_id]
    return {"kernel_id": str(kernel_id), "session_id": str(kernel.session_id)}
