"""A whole terminate run on stubs: coordinator, handler, batches and chord body, no SQL.

The store and the ledger are the in-memory stubs of their ports; the fan-out runs the agent
batches as their tasks would (execute, record with the declared moves), either one task per
agent (run_batch) or all agents in one task (run_batches), then the chord body
(coordinator.complete), in this process.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, TypeVar

from sokovan.ports import Ledger
from sokovan.scheduler.coordinator import Coordinator
from sokovan.scheduler.handlers import terminate_sessions
from sokovan.scheduler.handlers.base import HandlerContext
from sokovan.scheduler.outcomes import run_batch, run_batches
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
    SessionId,
    SessionInfo,
    SessionStatus,
)


class InProcessChord:
    """The batches as their tasks run them, then the chord body with every outcome."""

    def __init__(self, one_task: bool = False) -> None:
        self.one_task = one_task
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
        self.batches += batches
        if self.one_task:
            done = await run_batches(
                self.coordinator, self.ledger, self.ctx, run_id, operation, batches
            )
            outcomes = [*done, *skipped]
        else:
            outcomes = list(skipped)
            for batch in batches:
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


def in_memory_ledger(store: InMemoryStore) -> InMemoryLedger:
    return InMemoryLedger(KernelMoves(store))


L = TypeVar("L", bound=InMemoryLedger)


class TerminateStubs(Generic[L]):
    """The terminate handler registered on a coordinator over stubs; agents by name, with the
    delay of their answers."""

    def __init__(
        self,
        ledger: Callable[[InMemoryStore], L],
        agents: Mapping[str, float] | None = None,
        one_task: bool = False,
    ) -> None:
        self.store = InMemoryStore()
        self.ledger = ledger(self.store)
        self.pool = FakeAgentClientPool()
        delays = {"a1": 0.0, "a2": 0.0} if agents is None else agents
        self.agents = {name: self.pool.add(name, delay=d) for name, d in delays.items()}
        tracker = InMemoryTracker()
        self.coordinator = Coordinator(
            ledger=self.ledger,
            claims=InMemoryClaims(),
            kicker=RecordingKicker(),
            tracker=tracker,
            claim_lifetime=30,
            run_deadline=60,
        )
        self.chord = InProcessChord(one_task)
        fanout = TrackedFanOut(self.chord, tracker, self.ledger, settle=self.coordinator.settle)
        terminator = SessionTerminator(self.pool, FakePresence(), fanout)
        ctx = stub_context(self.store, pool=self.pool, fanout=fanout, terminator=terminator)
        self.chord.coordinator, self.chord.ledger = self.coordinator, self.ledger
        self.chord.ctx = ctx
        self.coordinator.register(terminate_sessions.build(ctx))

    def add_session(self, agents: Sequence[str | None]) -> tuple[SessionId, list[KernelId]]:
        """A TERMINATING session with a kernel on each named agent (None: no agent)."""
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
