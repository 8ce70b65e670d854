"""A whole terminate run on stubs: coordinator, handler, batches and chord body, no SQL.

The store and the ledger are the in-memory stubs of their ports; the fan-out runs each
agent batch as its task would (run_batch: execute, record with the declared moves) and
then the chord body (coordinator.complete), in this process.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sokovan.ports import Ledger, SchedulerStore
from sokovan.scheduler.coordinator import Coordinator
from sokovan.scheduler.handlers import terminate_sessions
from sokovan.scheduler.handlers.base import HandlerContext
from sokovan.scheduler.outcomes import run_batch
from sokovan.scheduler.terminator import SessionTerminator
from sokovan.scheduler.tracking import TrackedFanOut
from sokovan.stubs.agents import FakeAgentClientPool
from sokovan.stubs.claims import InMemoryClaims
from sokovan.stubs.context import stub_context
from sokovan.stubs.fanout import InMemoryTracker
from sokovan.stubs.kicker import RecordingKicker
from sokovan.stubs.ledger import InMemoryLedger
from sokovan.stubs.presence import FakePresence
from sokovan.stubs.store import InMemoryStore, KernelMoves
from sokovan.types import (
    AgentBatch,
    AgentId,
    ItemOutcome,
    KernelId,
    KernelInfo,
    KernelStatus,
    Operation,
    RunId,
    RunStatus,
    RunTrigger,
    SessionId,
    SessionInfo,
    SessionStatus,
)


class InProcessChord:
    """Each batch as its agent task runs it, then the chord body with every outcome."""

    def __init__(self) -> None:
        self.coordinator: Coordinator | None = None
        self.ledger: Ledger | None = None
        self.ctx: HandlerContext | None = None
        self.batches: list[AgentBatch] = []

    async def dispatch(
        self,
        run_id: RunId,
        operation: Operation,
        batches: Sequence[AgentBatch],
        skipped: Sequence[ItemOutcome] = (),
    ) -> str:
        assert self.coordinator and self.ledger and self.ctx
        outcomes = list(skipped)
        for batch in batches:
            self.batches.append(batch)
            outcomes += await run_batch(
                self.coordinator,
                self.ledger,
                self.ctx,
                run_id,
                operation,
                batch.agent_id,
                batch.items,
            )
        await self.coordinator.complete(run_id, operation, outcomes)
        return f"chord-{run_id}"


class Stubs:
    def __init__(self) -> None:
        self.store = InMemoryStore()
        self.ledger = InMemoryLedger(KernelMoves(self.store))
        self.pool = FakeAgentClientPool()
        self.agents = {name: self.pool.add(name) for name in ("a1", "a2")}
        tracker = InMemoryTracker()
        self.coordinator = Coordinator(
            ledger=self.ledger,
            claims=InMemoryClaims(),
            kicker=RecordingKicker(),
            tracker=tracker,
            claim_lifetime=30,
            run_deadline=60,
        )
        self.chord = InProcessChord()
        fanout = TrackedFanOut(self.chord, tracker, self.ledger, settle=self.coordinator.settle)
        store: SchedulerStore = self.store
        terminator = SessionTerminator(self.pool, FakePresence(), fanout)
        ctx = stub_context(store, pool=self.pool, fanout=fanout, terminator=terminator)
        self.chord.coordinator, self.chord.ledger = self.coordinator, self.ledger
        self.chord.ctx = ctx
        self.coordinator.register(terminate_sessions.build(ctx))

    def add_session(self, agents: Sequence[str | None]) -> tuple[SessionId, list[KernelId]]:
        sid = SessionId(uuid.uuid4())
        kids = [KernelId(uuid.uuid4()) for _ in agents]
        kernels = tuple(
            KernelInfo(
                kid,
                sid,
                None if agent is None else AgentId(agent),
                KernelStatus.TERMINATING,
                cluster_idx=i + 1,
            )
            for i, (kid, agent) in enumerate(zip(kids, agents, strict=True))
        )
        self.store.add_session(SessionInfo(sid, kernels, status=SessionStatus.TERMINATING))
        return sid, kids

    def destroyed(self) -> list[str]:
        calls = [c for a in self.agents.values() for c in a.calls_to("destroy_kernel")]
        return sorted(str(c.args[0]) for c in calls)


async def test_sc_rl_001_terminate_run_on_stubs_counts_moves_and_ends_sessions() -> None:
    """SC-RL-001 on stubs: 2 sessions, 5 kernels, one without agent, destroy fails on one.

    Given the stubs of the store and the ledger, when the terminate handler runs, then the
    run ends partial with 5/3/1/1, destroyed kernels are TERMINATED, the agentless one
    CANCELLED, the failed one stays TERMINATING, and only the finished session ends.
    """
    s = Stubs()
    s1, (k1, k2, k3) = s.add_session(["a1", "a1", None])
    s2, (k4, k5) = s.add_session(["a2", "a2"])
    s.agents["a2"].script("destroy_kernel", RuntimeError("container stuck"), key=k4)

    report = await s.coordinator.run(terminate_sessions.NAME, RunTrigger.BEAT)

    assert report.run_id is not None and report.status == RunStatus.PARTIAL
    run = await s.ledger.get_run(report.run_id)
    assert (run.requested, run.succeeded, run.failed, run.skipped) == (5, 3, 1, 1)
    assert run.operation == str(Operation.DESTROY_KERNELS) and run.fanout_id
    assert s.destroyed() == sorted(str(k) for k in (k1, k2, k4, k5))
    assert sorted(b.agent_id for b in s.chord.batches) == ["a1", "a2"]
    status = {k: s.store.kernels[k].status for k in (k1, k2, k3, k4, k5)}
    assert status == {
        k1: KernelStatus.TERMINATED,
        k2: KernelStatus.TERMINATED,
        k3: KernelStatus.CANCELLED,
        k4: KernelStatus.TERMINATING,
        k5: KernelStatus.TERMINATED,
    }
    assert (await s.store.get_session(s1)).status == SessionStatus.TERMINATED
    assert (await s.store.get_session(s2)).status == SessionStatus.TERMINATING


async def test_a_run_with_no_target_calls_no_agent() -> None:
    """SC-RL-002 on stubs: a session that is not TERMINATING is no target of the run."""
    s = Stubs()
    sid, _ = s.add_session(["a1"])
    await s.store.transition_sessions([sid], SessionStatus.RUNNING, [SessionStatus.TERMINATING])

    report = await s.coordinator.run(terminate_sessions.NAME, RunTrigger.BEAT)

    assert report.run_id is not None
    run = await s.ledger.get_run(report.run_id)
    assert (run.status, run.requested, run.succeeded, run.failed) == (
        RunStatus.SUCCEEDED,
        0,
        0,
        0,
    )
    assert s.destroyed() == [] and s.chord.batches == []
