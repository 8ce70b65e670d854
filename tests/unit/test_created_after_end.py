"""SC-CV-003, a create still in flight: a container an agent creates after its kernel ended is
not left behind, and its slots stay held until it is gone. Terminating a CREATING kernel
remembers it (CREATE_IN_FLIGHT); the create task that sees its kernel ended remembers it
again (CREATED_AFTER_END) and kicks reconcile_leftovers; a create that never reports is
destroyed once the start timeout is up."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta
from typing import NoReturn

from sokovan.config import Settings
from sokovan.records import CREATE_IN_FLIGHT, CREATED_AFTER_END, Leftover
from sokovan.scheduler.handlers import start_sessions
from sokovan.scheduler.handlers.reconcile_leftovers import NAME as RECONCILE
from sokovan.scheduler.handlers.reconcile_leftovers import ReconcileLeftovers
from sokovan.scheduler.outcomes import after_recording
from sokovan.stubs.fanout import InProcessFanOut
from sokovan.stubs.kicker import RecordingKicker
from sokovan.stubs.store import InMemoryStore
from sokovan.types import (
    AgentId,
    ItemOutcome,
    KernelId,
    KernelInfo,
    KernelStatus,
    Operation,
    Recorded,
    RunId,
    RunRecord,
    RunStatus,
    RunTrigger,
    SessionId,
    SessionInfo,
    SessionStatus,
    Verdict,
    utcnow,
)


def _session(store: InMemoryStore, *statuses: KernelStatus, status: SessionStatus) -> SessionInfo:
    sid = SessionId(uuid.uuid4())
    kernels = tuple(
        KernelInfo(
            id=KernelId(uuid.uuid4()),
            session_id=sid,
            agent_id=AgentId("a1"),
            image="image1",
            status=s,
        )
        for s in statuses
    )
    return store.add_session(SessionInfo(id=sid, kernels=kernels, name="s", status=status))


def _run(status: RunStatus = RunStatus.RUNNING) -> RunRecord:
    return RunRecord(
        RunId(1), "start_sessions", "beat", status, "create_kernels", 0, 0, 0, 0,
        utcnow(), None, None, None, None, None, None, None,
    )  # fmt: skip


def _no_launcher(fanout: object) -> NoReturn:
    raise AssertionError("an abandoned run launches nothing")


async def _no_batches(*args: object) -> NoReturn:
    raise AssertionError("an abandoned run dispatches nothing")


async def _destroyed(operation: Operation, batch: object) -> list[ItemOutcome]:
    return []


def _created(kernel: KernelInfo) -> ItemOutcome:
    return ItemOutcome(str(kernel.id), "a1", ok=True, detail={"session_id": str(kernel.session_id)})


async def test_a_container_created_after_its_kernel_ended_is_destroyed() -> None:
    """Of two kernels created, one moved to RUNNING and one had been TERMINATED meanwhile:
    only the second is remembered (CREATED_AFTER_END) and reconcile_leftovers kicked for it."""
    store, kicker = InMemoryStore(), RecordingKicker()
    live = _session(store, KernelStatus.RUNNING, status=SessionStatus.RUNNING).kernels[0]
    ended = _session(store, KernelStatus.TERMINATED, status=SessionStatus.TERMINATED).kernels[0]
    recorded = Recorded(True, 2, {Verdict.OK: [live.id]})

    await after_recording(
        kicker, store, _run(), Operation.CREATE_KERNELS, [_created(live), _created(ended)], recorded
    )

    [leftover] = await store.leftovers()
    assert (leftover.kernel_id, leftover.reason) == (ended.id, CREATED_AFTER_END)
    assert kicker.kicks == [(RECONCILE, RunTrigger.EVENT, [str(ended.id)])]


async def test_a_container_created_while_its_kernel_is_terminating_is_destroyed_again() -> None:
    """The create landed after the session was terminated but before the destroy's outcome was
    recorded: that destroy may have found nothing, so the container is destroyed once more."""
    store, kicker = InMemoryStore(), RecordingKicker()
    ending = _session(store, KernelStatus.TERMINATING, status=SessionStatus.TERMINATING)
    [kernel] = ending.kernels

    await after_recording(
        kicker, store, _run(), Operation.CREATE_KERNELS, [_created(kernel)], Recorded(True, 1, {})
    )

    assert [(x.kernel_id, x.reason) for x in await store.leftovers()] == [
        (kernel.id, CREATED_AFTER_END)
    ]


async def test_a_create_in_flight_is_destroyed_once_the_start_timeout_is_up() -> None:
    """reconcile_leftovers leaves a CREATE_IN_FLIGHT leftover alone for the start timeout (the
    create may still land), then destroys it; a CREATED_AFTER_END one goes at once."""
    store = InMemoryStore()
    fanout = InProcessFanOut(_destroyed)
    settings = Settings(start_session_timeout=60)
    now = utcnow()
    young, old, landed = (KernelId(uuid.uuid4()) for _ in range(3))
    sid = SessionId(uuid.uuid4())
    await store.remember_leftovers(
        [
            Leftover(young, sid, AgentId("a1"), CREATE_IN_FLIGHT, now, 0, None),
            Leftover(
                old, sid, AgentId("a1"), CREATE_IN_FLIGHT, now - timedelta(seconds=61), 0, None
            ),
            Leftover(landed, sid, AgentId("a1"), CREATED_AFTER_END, now, 0, None),
        ]
    )

    plan = await ReconcileLeftovers(store, fanout, settings).plan(RunId(1), None, 0)

    assert plan.requested == 2
    [record] = fanout.records
    [batch] = record.batches
    assert {i["kernel_id"] for i in batch.items} == {str(old), str(landed)}


async def test_a_destroyed_leftover_is_due_again_when_its_container_reappears() -> None:
    """A kernel remembered once and destroyed, then created again by a late create: due again."""
    store, kicker = InMemoryStore(), RecordingKicker()
    ended = _session(store, KernelStatus.TERMINATED, status=SessionStatus.TERMINATED).kernels[0]
    recorded = Recorded(False, 1, {})  # the run was over: evidence only, nothing moved
    await after_recording(
        kicker, store, _run(), Operation.CREATE_KERNELS, [_created(ended)], recorded
    )
    await store.leftovers_destroyed([ended.id])
    assert await store.leftovers_due() == []

    await after_recording(
        kicker, store, _run(), Operation.CREATE_KERNELS, [_created(ended)], recorded
    )

    assert [x.kernel_id for x in await store.leftovers_due()] == [ended.id]


async def test_a_failed_create_or_a_creating_kernel_is_left_alone() -> None:
    """A failed create has no container; a kernel still CREATING is its run's to move."""
    store, kicker = InMemoryStore(), RecordingKicker()
    ended = _session(store, KernelStatus.TERMINATED, status=SessionStatus.TERMINATED).kernels[0]
    creating = _session(store, KernelStatus.CREATING, status=SessionStatus.CREATING).kernels[0]
    failed = ItemOutcome(str(ended.id), "a1", ok=False, error="refused")

    await after_recording(
        kicker,
        store,
        _run(),
        Operation.CREATE_KERNELS,
        [failed, _created(creating)],
        Recorded(True, 2, {}),
    )

    assert await store.leftovers() == []
    assert kicker.kicks == []


async def test_an_abandoned_run_remembers_its_creates_in_flight() -> None:
    """A run abandoned while creating: its CREATING kernels whose create was sent are
    remembered (CREATE_IN_FLIGHT) so a container that appears after the destroy goes too; a
    kernel never sent to an agent is not."""
    store = InMemoryStore()
    session = _session(
        store, KernelStatus.CREATING, KernelStatus.CREATING, status=SessionStatus.CREATING
    )
    sent, unsent = session.kernels
    store.kernels[unsent.id] = dataclasses.replace(unsent, create_sent=False)
    handler = start_sessions.StartSessions(
        store, _no_launcher, InProcessFanOut(_no_batches), Settings()
    )

    follow = await handler.abandoned(RunId(1))

    assert store.sessions[session.id].status == SessionStatus.TERMINATING
    assert follow == [("terminate_sessions", [str(session.id)])]
    reasons = {x.kernel_id: x.reason for x in await store.leftovers()}
    assert reasons == {sent.id: CREATE_IN_FLIGHT}
