"""The coordinator on stubs alone: claims, runs, declared transitions, follow-ups, recovery.

No Valkey and no SQL: every port is an in-memory stub from sokovan.stubs, and the
handler under test is declared here, as a new handler module would declare it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta

import pytest

from sokovan.errors import UnknownHandler
from sokovan.scheduler.coordinator import Coordinator
from sokovan.scheduler.handlers.base import (
    FollowUps,
    HandlerDeclaration,
    HandlerRuntime,
    Moved,
    Plan,
    Targets,
    Transition,
)
from sokovan.scheduler.leases import HOLDER_GONE
from sokovan.scheduler.outcomes import record_outcomes
from sokovan.stubs.claims import InMemoryClaims
from sokovan.stubs.fanout import InMemoryTracker
from sokovan.stubs.kicker import RecordingKicker
from sokovan.stubs.ledger import InMemoryKernelStates, InMemoryLedger
from sokovan.types import (
    ItemOutcome,
    KernelId,
    KernelStatus,
    Operation,
    RunId,
    RunStatus,
    RunTrigger,
    SessionStatus,
    Verdict,
    utcnow,
)

NAME = "probe_kernels"


class Probe:
    """A test handler: plans what the test says, completes by recording what it saw."""

    def __init__(self, tracker: InMemoryTracker) -> None:
        self.tracker = tracker
        self.plan_result = Plan(requested=0)
        self.completed: list[tuple[RunId, list[str], Moved]] = []
        self.follow_ups: FollowUps = ()

    async def plan(self, run_id: RunId, scope: Sequence[str] | None, budget: int) -> Plan:
        if self.plan_result.dispatched:  # as the tracked fan-out counts a dispatch
            await self.tracker.dispatched(run_id)
        return self.plan_result

    async def complete(
        self, run_id: RunId, outcomes: Sequence[ItemOutcome], moved: Moved
    ) -> FollowUps:
        self.completed.append((run_id, [o.item_id for o in outcomes], moved))
        return self.follow_ups


def declare(probe: Probe) -> HandlerDeclaration:
    return HandlerDeclaration(
        name=NAME,
        lock_id="LOCKID_PROBE",
        description="probes kernels",
        default_interval=7.0,
        targets=Targets(kernels=(KernelStatus.RUNNING,)),
        transitions={
            Verdict.OK: Transition(KernelStatus.TERMINATED, (KernelStatus.RUNNING,), "PROBED"),
            Verdict.FAILED: Transition(KernelStatus.ERROR, (KernelStatus.RUNNING,)),
        },
        build=lambda ctx: HandlerRuntime(
            declare(probe), probe.plan, {Operation.DESTROY_KERNELS: probe.complete}
        ),
        batches={},
    )


class Stubs:
    def __init__(self, kernels: int = 3) -> None:
        self.kernels = [KernelId(uuid.uuid4()) for _ in range(kernels)]
        self.states = InMemoryKernelStates({k: KernelStatus.RUNNING for k in self.kernels})
        self.ledger = InMemoryLedger(self.states)
        self.claims = InMemoryClaims()
        self.tracker = InMemoryTracker()
        self.kicker = RecordingKicker()
        self.probe = Probe(self.tracker)
        self.coordinator = Coordinator(
            ledger=self.ledger,
            claims=self.claims,
            kicker=self.kicker,
            tracker=self.tracker,
            claim_lifetime=30,
            run_deadline=60,
            record_empty_beat_runs=False,
        )
        declaration = declare(self.probe)
        self.coordinator.register(
            HandlerRuntime(
                declaration, self.probe.plan, {Operation.DESTROY_KERNELS: self.probe.complete}
            )
        )

    def outcome(self, i: int, ok: bool = True) -> ItemOutcome:
        return ItemOutcome(str(self.kernels[i]), "a1", ok=ok, error=None if ok else "boom")


async def test_batch_records_and_moves_the_body_only_counts() -> None:
    """A batch records its outcomes with their declared moves in one step; the chord body
    writes no kernel status: it hands the handler what moved, counts, and closes partial."""
    s = Stubs()
    s.probe.plan_result = Plan(requested=3, dispatched=True)
    report = await s.coordinator.run(NAME, RunTrigger.API)
    assert report.status == RunStatus.RUNNING and report.run_id is not None
    transitions = declare(s.probe).transitions

    _, recorded = await record_outcomes(
        s.ledger, transitions, report.run_id, [s.outcome(0), s.outcome(1, ok=False)]
    )
    assert s.states.statuses[s.kernels[0]] == KernelStatus.TERMINATED
    assert s.states.info[s.kernels[0]] == "PROBED"
    assert s.states.statuses[s.kernels[1]] == KernelStatus.ERROR
    assert [(o.verdict, o.moved) for o in recorded] == [
        (Verdict.OK, True),
        (Verdict.FAILED, True),
    ]
    moves_before_body = len(s.states.moves)

    record = await s.coordinator.complete(report.run_id, Operation.DESTROY_KERNELS, recorded)

    assert len(s.states.moves) == moves_before_body, "the chord body moved a kernel"
    assert record is not None and record.status == RunStatus.PARTIAL
    assert (record.succeeded, record.failed) == (1, 1)
    assert s.states.statuses[s.kernels[2]] == KernelStatus.RUNNING
    [(run_id, items, moved)] = s.probe.completed
    assert run_id == report.run_id and items == [str(s.kernels[0]), str(s.kernels[1])]
    assert list(moved[Verdict.OK]) == [s.kernels[0]]
    assert list(moved[Verdict.FAILED]) == [s.kernels[1]]
    assert await s.claims.holder("LOCKID_PROBE") is None


async def test_second_start_is_skipped_and_rerun_when_the_holder_finishes() -> None:
    """One run per handler: an API start during a run is skipped, then kicked on release."""
    s = Stubs()
    s.probe.plan_result = Plan(requested=1, dispatched=True)
    first = await s.coordinator.run(NAME, RunTrigger.BEAT)
    assert first.run_id is not None

    second = await s.coordinator.run(NAME, RunTrigger.API)

    assert second.status == RunStatus.SKIPPED and second.run_id is None
    await s.coordinator.complete(first.run_id, Operation.DESTROY_KERNELS, [s.outcome(0)])
    assert s.kicker.kicks == [(NAME, RunTrigger.EVENT, None)]


async def test_paused_handler_records_nothing() -> None:
    s = Stubs()
    s.ledger.paused.add(NAME)
    report = await s.coordinator.run(NAME, RunTrigger.MANUAL)
    assert (report.status, report.run_id, report.note) == (RunStatus.SKIPPED, None, "paused")
    assert s.ledger.runs == {}


async def test_held_plan_closes_the_run_as_held() -> None:
    """A handler that holds back on purpose (a braked sweep) gets a status of its own."""
    s = Stubs()
    s.probe.plan_result = Plan(requested=3, note="brake: outage", held="brake: outage")
    report = await s.coordinator.run(NAME, RunTrigger.BEAT)
    assert report.status == RunStatus.HELD
    assert (await s.ledger.get_run(RunId(1))).note == "brake: outage"


async def test_idle_beat_tick_leaves_no_row() -> None:
    s = Stubs()
    report = await s.coordinator.run(NAME, RunTrigger.BEAT)
    assert report.status == RunStatus.SUCCEEDED and report.run_id is None
    assert s.ledger.runs == {}


async def test_follow_ups_are_kicked_as_events() -> None:
    s = Stubs()
    s.probe.plan_result = Plan(requested=1, dispatched=True)
    s.probe.follow_ups = [("terminate_sessions", ["x"])]
    report = await s.coordinator.run(NAME, RunTrigger.API)
    assert report.run_id is not None
    await s.coordinator.complete(report.run_id, Operation.DESTROY_KERNELS, [s.outcome(0)])
    assert ("terminate_sessions", RunTrigger.EVENT, ["x"]) in s.kicker.kicks


async def test_recovery_abandons_overdue_runs_keeping_what_they_recorded() -> None:
    """An overdue run is abandoned keeping what its batches recorded (and moved: nothing is
    moved again), and its claim is freed for the next run."""
    s = Stubs()
    s.probe.plan_result = Plan(requested=2, dispatched=True)
    report = await s.coordinator.run(NAME, RunTrigger.API)
    assert report.run_id is not None
    await s.ledger.update_run(report.run_id, operation=str(Operation.DESTROY_KERNELS))
    await record_outcomes(s.ledger, declare(s.probe).transitions, report.run_id, [s.outcome(0)])
    await s.ledger.update_run(report.run_id, deadline_at=utcnow() - timedelta(seconds=1))
    moves_before = len(s.states.moves)

    abandoned = await s.coordinator.recover()

    assert abandoned == [report.run_id]
    run = await s.ledger.get_run(report.run_id)
    assert run.status == RunStatus.ABANDONED and run.succeeded == 1
    assert s.states.statuses[s.kernels[0]] == KernelStatus.TERMINATED
    assert len(s.states.moves) == moves_before, "abandoning wrote a kernel move again"
    assert await s.claims.holder("LOCKID_PROBE") is None


async def test_unknown_handler_names_the_known_ones() -> None:
    s = Stubs()
    with pytest.raises(UnknownHandler, match=NAME):
        await s.coordinator.run("nope")


def test_declarations_drive_beat_cli_and_routing() -> None:
    """Every declared handler gets a beat entry and a CLI name; operations get agent tasks."""
    from beat_schedule import beat_schedule
    from sokovan.config import Settings
    from sokovan.scheduler.handlers import HANDLERS, batch_runners, handler_names

    schedule = beat_schedule(Settings(sweep_interval=42))
    for d in HANDLERS:
        # SC-OP-010: each handler's ticks go to its own task name (readable in Flower).
        assert schedule[d.beat_entry]["task"] == f"sokovan.handler.{d.name}"
    assert schedule["sweep-stale-kernels"]["schedule"] == 42
    assert set(handler_names()) == {d.name for d in HANDLERS}
    assert set(batch_runners()) == set(Operation)
    assert all(d.targets.sessions or d.targets.kernels for d in HANDLERS)
    assert all(isinstance(s, SessionStatus) for d in HANDLERS for s in d.targets.sessions)


async def _dispatched_run(s: Stubs) -> tuple[RunId, str]:
    s.probe.plan_result = Plan(requested=2, dispatched=True)
    report = await s.coordinator.run(NAME, RunTrigger.API)
    assert report.run_id is not None
    token = (await s.ledger.get_run(report.run_id)).claim_token
    assert token is not None
    return report.run_id, token


async def test_sc_cv_008_a_run_whose_worker_is_gone_is_abandoned_before_its_lease_lapses() -> None:
    """SC-CV-008: a worker doing a batch of the run dies; its lease still has 30 s to live,
    yet recovery abandons the run as holder gone, frees the lease and starts the next run."""
    s = Stubs()
    run_id, token = await _dispatched_run(s)
    await s.claims.hold(token)  # a batch under way on some worker
    s.claims.kill(token)  # that worker's tree is SIGKILLed
    assert await s.claims.holder("LOCKID_PROBE") == token

    assert await s.coordinator.recover() == [run_id]

    run = await s.ledger.get_run(run_id)
    assert run.status == RunStatus.ABANDONED
    assert (run.note or "").startswith(HOLDER_GONE)
    assert await s.claims.holder("LOCKID_PROBE") is None
    assert s.kicker.kicks == [(NAME, RunTrigger.EVENT, None)]


async def test_sc_cv_008_a_live_or_finished_holder_keeps_the_run() -> None:
    """SC-CV-008: a worker still at work, or one that died after its piece ended, costs the
    run nothing: recovery leaves it running under its lease."""
    s = Stubs()
    run_id, token = await _dispatched_run(s)
    await s.claims.hold(token)
    assert await s.coordinator.recover() == []
    await s.claims.unhold(token)
    s.claims.kill(token)
    assert await s.coordinator.recover() == []
    assert (await s.ledger.get_run(run_id)).status == RunStatus.RUNNING
    assert await s.claims.holder("LOCKID_PROBE") == token
    assert s.kicker.kicks == []
