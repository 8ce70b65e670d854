"""A coordinator over real SQLite and Valkey with fake agents, for coordinator-level tests."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from redis.asyncio import Redis

from sokovan.config import Settings
from sokovan.db.ledger import RunLedger
from sokovan.db.offload import OffloadedLedger, OffloadedStore
from sokovan.db.repository import NewKernel, SchedulerRepository
from sokovan.ports import Ledger, SchedulerStore
from sokovan.scheduler.claims import RedisClaims
from sokovan.scheduler.coordinator import Coordinator
from sokovan.scheduler.handlers import sweep_stale_kernels, terminate_sessions
from sokovan.scheduler.handlers.base import HandlerContext
from sokovan.scheduler.outcomes import record_batch
from sokovan.scheduler.terminator import SessionTerminator
from sokovan.scheduler.tracking import FanOutTracker, TrackedFanOut
from sokovan.stubs.agents import FakeAgentClient, FakeAgentClientPool
from sokovan.stubs.fanout import InProcessFanOut
from sokovan.stubs.kicker import RecordingKicker
from sokovan.stubs.presence import FakePresence
from sokovan.stubs.secrets import FakeSecretStore
from sokovan.types import (
    AgentBatch,
    AgentId,
    ItemOutcome,
    KernelId,
    Operation,
    ResourceSlot,
    RunId,
    SessionId,
    SessionStatus,
)


class ChordFanOut:
    """InProcessFanOut running the terminator's batches, then the chord body.

    `hold` keeps the fan-out in flight (batches ran, body not yet): the run stays
    `running` until `release()`. `refuse` makes dispatch fail as a broker that is down.
    """

    def __init__(self, ledger: Ledger, repo: SchedulerStore) -> None:
        self.inner = InProcessFanOut(self._execute)
        self.ledger = ledger
        self.repo = repo
        self.coordinator: Coordinator | None = None
        self.terminator: SessionTerminator | None = None
        self.hold = False
        self.refuse: Exception | None = None
        self.held: list[tuple[RunId, Operation, list[ItemOutcome]]] = []

    async def _execute(self, operation: Operation, batch: AgentBatch) -> list[ItemOutcome]:
        assert self.terminator is not None
        return await self.terminator.destroy_batch(batch.agent_id, batch.items)

    async def dispatch(
        self,
        run_id: RunId,
        operation: Operation,
        batches: Sequence[AgentBatch],
        skipped: Sequence[ItemOutcome] = (),
    ) -> str:
        if self.refuse is not None:
            raise self.refuse
        fanout_id = await self.inner.dispatch(run_id, operation, batches, skipped)
        # As the Celery fan-out does, the run notes its fan-out id and operation.
        await self.ledger.update_run(run_id, fanout_id=fanout_id, operation=str(operation))
        done = self.inner.records[-1].outcomes
        if self.hold:
            # The batches ran but have not recorded yet (their tasks are still finishing).
            self.held.append((run_id, operation, done))
        else:
            assert self.coordinator is not None
            await self.coordinator.complete(run_id, operation, await self.record(run_id, done))
        return fanout_id

    async def record(self, run_id: RunId, outcomes: Sequence[ItemOutcome]) -> list[ItemOutcome]:
        """As each agent's batch task does: records its outcomes with their kernel moves;
        items settled at dispatch (no agent) were recorded already."""
        assert self.coordinator is not None
        batch = [o for o in outcomes if not o.moved and o.agent_id is not None]
        _, marked = await record_batch(
            self.coordinator, self.ledger, self.repo, run_id, Operation.DESTROY_KERNELS, batch
        )
        return [*marked, *(o for o in outcomes if o.moved or o.agent_id is None)]

    async def release(self) -> None:
        assert self.coordinator is not None
        held, self.held = self.held, []
        for run_id, operation, outcomes in held:
            await self.coordinator.complete(run_id, operation, await self.record(run_id, outcomes))


@dataclass
class Rig:
    engine: sa.Engine
    repo: SchedulerRepository
    ledger: RunLedger
    coordinator: Coordinator
    pool: FakeAgentClientPool
    presence: FakePresence
    fanout: ChordFanOut
    kicker: RecordingKicker
    redis: Redis
    # The async ports over `repo` and `ledger`, as the coordinator and handlers see them.
    store: OffloadedStore
    runs: OffloadedLedger
    agents: dict[str, FakeAgentClient] = field(default_factory=dict)

    def destroyed(self) -> list[KernelId]:
        return [c.args[0] for a in self.agents.values() for c in a.calls_to("destroy_kernel")]

    def agent_calls(self) -> int:
        return sum(len(a.calls) for a in self.agents.values())


def build_rig(
    engine: sa.Engine,
    redis: Redis,
    *,
    claim_lifetime: float = 60.0,
    budgets: dict[str, int] | None = None,
) -> Rig:
    repo = SchedulerRepository(engine)
    ledger = RunLedger(engine)
    store, runs = OffloadedStore(repo), OffloadedLedger(ledger)
    pool = FakeAgentClientPool()
    agents = {name: pool.add(name) for name in ("a1", "a2")}
    presence = FakePresence()
    fanout = ChordFanOut(runs, store)
    tracker = FanOutTracker(redis)
    kicker = RecordingKicker()
    coordinator = Coordinator(
        ledger=runs,
        claims=RedisClaims(redis),
        kicker=kicker,
        tracker=tracker,
        claim_lifetime=claim_lifetime,
        run_deadline=600,
        budgets=budgets,
    )
    tracked = TrackedFanOut(fanout, tracker, None, settle=coordinator.settle)
    terminator = SessionTerminator(pool, presence, tracked)
    fanout.coordinator, fanout.terminator = coordinator, terminator
    ctx = HandlerContext(
        settings=Settings(sweep_max_stale_ratio=0.5, sweep_brake_min_kernels=10),
        repository=store,
        terminator=terminator,
        pool=pool,
        secrets=FakeSecretStore(),
        fanout=tracked,
    )
    coordinator.register(terminate_sessions.build(ctx))
    coordinator.register(sweep_stale_kernels.build(ctx))
    return Rig(
        engine,
        repo,
        ledger,
        coordinator,
        pool,
        presence,
        fanout,
        kicker,
        redis,
        store,
        runs,
        agents,
    )


def add_session(
    rig: Rig,
    agents: Sequence[str | None],
    status: SessionStatus = SessionStatus.TERMINATING,
    slots: dict[str, str] | None = None,
) -> tuple[SessionId, list[KernelId]]:
    sid = SessionId(uuid.uuid4())
    kids = [KernelId(uuid.uuid4()) for _ in agents]
    kernels = [
        NewKernel(
            kid,
            None if a is None else AgentId(a),
            "python:3.12",
            ResourceSlot.from_json(slots if slots is not None else {"cpu": "1", "mem": "1024"}),
            cluster_idx=i + 1,
            cluster_hostname=f"k{i + 1}",
        )
        for i, (kid, a) in enumerate(zip(kids, agents, strict=True))
    ]
    rig.repo.create_session(session_id=sid, name="s", kernels_=kernels, status=status)
    return sid, kids
