"""SC-CV-003, a create still in flight: a container an agent creates after its kernel ended is
not left behind. The create task that sees it remembers a leftover and kicks
reconcile_leftovers; a run abandoned with creates in flight remembers its kernels as leftovers
due once those calls' time is up."""

from __future__ import annotations

import dataclasses
import uuid
from typing import NoReturn

from sokovan.config import Settings
from sokovan.scheduler.handlers import start_sessions
from sokovan.scheduler.handlers.reconcile_leftovers import NAME as RECONCILE
from sokovan.scheduler.outcomes import CREATED_AFTER_END, after_recording
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
    assert reasons == {sent.id: start_sessions.CREATE_IN_FLIGHT}
