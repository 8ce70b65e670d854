"""SessionTerminator: destroy planning, the per-agent destroy batch, and its fan-out."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import pytest

from sokovan.errors import AgentError
from sokovan.scheduler.terminator import SessionTerminator, destroy_kernels_on_agent
from sokovan.scheduler.terminator.destroy import DestroyJob, destroy_jobs
from sokovan.stubs.agents import FakeAgentClient, FakeAgentClientPool
from sokovan.stubs.fanout import InProcessFanOut
from sokovan.stubs.presence import FakePresence
from sokovan.types import (
    AgentBatch,
    AgentId,
    ItemOutcome,
    KernelId,
    KernelInfo,
    KernelTerminationResult,
    Operation,
    ResourceSlot,
    RunId,
    SessionId,
    SessionInfo,
)

A1, A2, A3 = AgentId("a1"), AgentId("a2"), AgentId("a3")


def new_kernel(session_id: SessionId, agent: AgentId | None, **slots: str) -> KernelInfo:
    return KernelInfo(
        id=KernelId(uuid.uuid4()),
        session_id=session_id,
        agent_id=agent,
        occupied_slots=ResourceSlot.from_json(slots or {"cpu": "1", "mem": "1073741824"}),
    )


def new_session(*agents: AgentId | None, status_info: str | None = None) -> SessionInfo:
    session_id = SessionId(uuid.uuid4())
    kernels = tuple(new_kernel(session_id, agent) for agent in agents)
    return SessionInfo(id=session_id, kernels=kernels, status_info=status_info)


def build(
    pool: FakeAgentClientPool, concurrency: int = 16
) -> tuple[SessionTerminator, InProcessFanOut]:
    """A terminator whose fan-out runs the real per-agent destroy function in-process."""

    async def execute(operation: Operation, batch: AgentBatch) -> list[ItemOutcome]:
        assert operation is Operation.DESTROY_KERNELS
        return await destroy_kernels_on_agent(pool, batch.agent_id, batch.items, concurrency)

    fanout = InProcessFanOut(execute)
    terminator = SessionTerminator(pool, FakePresence(), fanout, destroy_concurrency=concurrency)
    return terminator, fanout


async def terminate_kernel(
    pool: FakeAgentClientPool,
    agent_id: AgentId,
    kernel_id: KernelId,
    session_id: SessionId,
    reason: str,
    occupied_slots: ResourceSlot,
) -> KernelTerminationResult:
    """One kernel through the path of a destroy batch: one job on one leased client."""
    job = DestroyJob(kernel_id, session_id, reason, occupied_slots)
    [(result, _)] = await destroy_jobs(pool, agent_id, [job], 1)
    return result


async def outcome_of(call: Awaitable[object]) -> object:
    """What a call returns, even one declared to return nothing."""
    return await call


def destroyed_ids(client: FakeAgentClient) -> list[KernelId]:
    return [call.args[0] for call in client.calls_to("destroy_kernel")]


async def test_sc_te_001_all_kernels_terminated_successfully() -> None:
    """SC-TE-001: both kernels of s1 on a1 get destroy_kernel(k, s1, reason, False)."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    terminator, fanout = build(pool)
    session = new_session(A1, A1)

    returned = await outcome_of(
        terminator.terminate_sessions_for_handler([session], run_id=RunId(7))
    )

    assert returned is None
    calls = a1.calls_to("destroy_kernel")
    assert [c.args for c in calls] == [
        (k.id, session.id, "USER_REQUESTED") for k in session.kernels
    ]
    assert all(c.kwargs == {"suppress_events": False} for c in calls)
    [record] = fanout.records
    assert record.run_id == RunId(7)
    assert record.operation is Operation.DESTROY_KERNELS
    assert (record.succeeded, record.failed, record.skipped) == (2, 0, [])


async def test_sc_te_002_kernel_without_agent_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """SC-TE-002: k2 has no agent: not destroyed, logged, handed to the fan-out as skipped."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    terminator, fanout = build(pool)
    session = new_session(A1, None)
    k1, k2 = session.kernels

    with caplog.at_level(logging.WARNING):
        await terminator.terminate_sessions_for_handler([session])

    assert destroyed_ids(a1) == [k1.id]
    assert str(k2.id) in caplog.text
    [record] = fanout.records
    [skipped] = record.skipped
    assert skipped.item_id == str(k2.id)
    assert (skipped.skipped, skipped.ok, skipped.error) == (True, False, "no agent assigned")
    assert skipped.detail["session_id"] == str(session.id)
    assert [item["kernel_id"] for b in record.batches for item in b.items] == [str(k1.id)]
    assert (record.succeeded, record.failed) == (1, 0)


async def test_sc_te_003_empty_session_list_returns_immediately() -> None:
    """SC-TE-003: no sessions: None, no dispatch, no agent touched."""
    pool = FakeAgentClientPool()
    pool.add(A1)
    terminator, fanout = build(pool)

    assert await outcome_of(terminator.terminate_sessions_for_handler([])) is None

    assert fanout.records == []
    assert pool.acquired == []


async def test_sc_te_004_partial_failure_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SC-TE-004: a1 raises AgentError for k1, a2 destroys k2: one success, one failure."""
    pool = FakeAgentClientPool()
    a1, a2 = pool.add(A1), pool.add(A2)
    terminator, fanout = build(pool)
    session = new_session(A1, A2)
    k1, k2 = session.kernels
    a1.script("destroy_kernel", AgentError("Agent offline"), key=k1.id)

    with caplog.at_level(logging.WARNING):
        await terminator.terminate_sessions_for_handler([session])

    assert destroyed_ids(a1) == [k1.id]
    assert destroyed_ids(a2) == [k2.id]
    [record] = fanout.records
    assert (record.succeeded, record.failed) == (1, 1)
    by_kernel = {o.item_id: o for o in record.outcomes}
    assert by_kernel[str(k1.id)].error == "Agent offline"
    assert by_kernel[str(k2.id)].ok
    assert str(k1.id) in caplog.text and "Agent offline" in caplog.text


async def test_sc_te_005_multiple_sessions_terminated_in_parallel() -> None:
    """SC-TE-005: 3 sessions x 2 kernels: 6 destroys, all in flight at once.

    Given every destroy waits until all six have started,
    When the sessions are terminated,
    Then it completes (a sequential implementation would wait forever).
    """
    pool = FakeAgentClientPool()
    clients = [pool.add(a) for a in (A1, A2, A3)]
    all_started = asyncio.Event()
    started: list[KernelId] = []

    async def destroy(kernel_id: KernelId) -> None:
        started.append(kernel_id)
        if len(started) == 6:
            all_started.set()
        await all_started.wait()

    for client in clients:
        client.script("destroy_kernel", destroy)
    terminator, fanout = build(pool)
    sessions = [new_session(a, a) for a in (A1, A2, A3)]

    await asyncio.wait_for(terminator.terminate_sessions_for_handler(sessions), timeout=10)

    [record] = fanout.records
    assert sorted(len(b.items) for b in record.batches) == [2, 2, 2]
    expected = {k.id for s in sessions for k in s.kernels}
    assert set(started) == expected and len(started) == 6
    assert record.succeeded == 6


async def test_sc_te_006_termination_result_captures_details() -> None:
    """SC-TE-006: one kernel's destroy reports kernel, agent, slots and success."""
    pool = FakeAgentClientPool()
    pool.add(A1)
    kernel_id, session_id = KernelId(uuid.uuid4()), SessionId(uuid.uuid4())
    slots = ResourceSlot(cpu=Decimal(4), mem=Decimal(8 * 1024**3))

    result = await terminate_kernel(pool, A1, kernel_id, session_id, "USER_REQUESTED", slots)

    assert (result.kernel_id, result.agent_id, result.occupied_slots) == (kernel_id, A1, slots)
    assert result.success is True
    assert result.error is None


async def test_sc_te_007_termination_error_captured_in_result() -> None:
    """SC-TE-007: an AgentError from destroy_kernel becomes success=False with its message."""
    pool = FakeAgentClientPool()
    pool.add(A1).script("destroy_kernel", AgentError("Connection timeout"))

    result = await terminate_kernel(
        pool, A1, KernelId(uuid.uuid4()), SessionId(uuid.uuid4()), "USER_REQUESTED", ResourceSlot()
    )

    assert result.success is False
    assert result.error == "Connection timeout"


async def test_terminate_kernel_unreachable_agent_is_a_failed_result() -> None:
    """One kernel's destroy on an agent the pool cannot reach returns a failure, not raises."""
    pool = FakeAgentClientPool()

    result = await terminate_kernel(
        pool, A1, KernelId(uuid.uuid4()), SessionId(uuid.uuid4()), "USER_REQUESTED", ResourceSlot()
    )

    assert result.success is False
    assert result.error is not None and "a1" in result.error


async def test_batches_are_per_agent_and_json_safe() -> None:
    """Items carry ids as strings, the reason and slots as JSON; one batch per agent."""
    pool = FakeAgentClientPool()
    pool.add(A1)
    pool.add(A2)
    terminator, fanout = build(pool)
    s1, s2 = new_session(A1, A2), new_session(A1)

    await terminator.terminate_sessions_for_handler([s1, s2], reason="FORCE_TERMINATED")

    [record] = fanout.records
    assert [b.agent_id for b in record.batches] == [A1, A2]
    a1_items = record.batches[0].items
    assert [i["kernel_id"] for i in a1_items] == [str(s1.kernels[0].id), str(s2.kernels[0].id)]
    assert a1_items[0] == {
        "kernel_id": str(s1.kernels[0].id),
        "session_id": str(s1.id),
        "reason": "FORCE_TERMINATED",
        "occupied_slots": s1.kernels[0].occupied_slots.to_json(),
    }
    batches = [list(b.items) for b in record.batches]
    assert json.loads(json.dumps(batches)) == batches


async def test_session_status_info_is_the_destroy_reason() -> None:
    """A session's recorded termination reason is what the agent is told."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    terminator, _ = build(pool)

    await terminator.terminate_sessions_for_handler([new_session(A1, status_info="IDLE_TIMEOUT")])

    assert [c.args[2] for c in a1.calls_to("destroy_kernel")] == ["IDLE_TIMEOUT"]


async def test_kernel_listed_twice_is_destroyed_once() -> None:
    """The same kernel in two session rows is planned once."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    terminator, fanout = build(pool)
    session = new_session(A1)

    await terminator.terminate_sessions_for_handler([session, session])

    assert destroyed_ids(a1) == [session.kernels[0].id]
    assert fanout.records[0].succeeded == 1


async def test_all_kernels_skipped_still_reports_them() -> None:
    """Sessions whose kernels have no agent: no batch, no agent call, skipped outcomes only."""
    pool = FakeAgentClientPool()
    terminator, fanout = build(pool)
    session = new_session(None, None)

    await terminator.terminate_sessions_for_handler([session])

    [record] = fanout.records
    assert record.batches == []
    assert [o.item_id for o in record.skipped] == [str(k.id) for k in session.kernels]
    assert pool.acquired == []


async def test_destroy_batch_unreachable_agent_fails_every_kernel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An agent that cannot be acquired makes each of its kernels a failed outcome."""
    session = new_session(A1, A1)
    items = [_item(k, session) for k in session.kernels]

    with caplog.at_level(logging.WARNING):
        outcomes = await destroy_kernels_on_agent(FakeAgentClientPool(), A1, items, 4)

    assert [o.item_id for o in outcomes] == [str(k.id) for k in session.kernels]
    assert all(not o.ok and o.error and "not reachable" in o.error for o in outcomes)
    assert all(str(k.id) in caplog.text for k in session.kernels)


async def test_destroy_batch_malformed_items_fail_alone() -> None:
    """Bad UUIDs, missing keys and non-objects are failed outcomes; good items still run."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    session = new_session(A1)
    good = _item(session.kernels[0], session)
    items: list[Any] = [
        {"kernel_id": "not-a-uuid", "session_id": str(session.id)},
        {"kernel_id": str(uuid.uuid4())},
        "garbage",
        good,
        {**good, "kernel_id": str(uuid.uuid4()), "occupied_slots": {"cpu": "lots"}},
    ]

    outcomes = await destroy_kernels_on_agent(pool, A1, items, 4)

    assert [o.ok for o in outcomes] == [False, False, False, True, False]
    errors = [o.error or "" for o in outcomes]
    assert "kernel_id" in errors[0] and "not-a-uuid" in errors[0]
    assert "missing session_id" in errors[1]
    assert "expected an object" in errors[2]
    assert "occupied_slots" in errors[4]
    assert outcomes[3].detail == {
        "session_id": str(session.id),
        "occupied_slots": good["occupied_slots"],
    }
    assert destroyed_ids(a1) == [session.kernels[0].id]


async def test_destroy_batch_is_idempotent() -> None:
    """Destroying kernels already gone is success: the agent returns normally again."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    session = new_session(A1, A1)
    items = [_item(k, session) for k in session.kernels]

    first = await destroy_kernels_on_agent(pool, A1, items, 4)
    second = await destroy_kernels_on_agent(pool, A1, items, 4)

    assert all(o.ok for o in first + second)
    assert len(a1.calls_to("destroy_kernel")) == 4


async def test_destroy_batch_concurrency_is_bounded() -> None:
    """No more than `concurrency` destroy calls are in flight on one agent."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    in_flight, peak = 0, 0

    async def destroy(kernel_id: KernelId) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(5):
            await asyncio.sleep(0)
        in_flight -= 1

    a1.script("destroy_kernel", destroy)
    session = new_session(*([A1] * 7))

    outcomes = await destroy_kernels_on_agent(
        pool, A1, [_item(k, session) for k in session.kernels], 3
    )

    assert peak == 3
    assert len(outcomes) == 7 and all(o.ok for o in outcomes)


async def test_destroy_batch_keeps_results_when_release_fails() -> None:
    """A client that fails on release does not turn completed destroys into failures."""

    class ReleaseFails(FakeAgentClientPool):
        @asynccontextmanager
        async def acquire(self, agent_id: AgentId) -> AsyncIterator[FakeAgentClient]:
            async with super().acquire(agent_id) as client:
                yield client
            raise AgentError("release failed")

    pool = ReleaseFails()
    pool.add(A1)
    session = new_session(A1)

    outcomes = await destroy_kernels_on_agent(pool, A1, [_item(session.kernels[0], session)], 2)

    assert [o.ok for o in outcomes] == [True]


def _item(kernel: KernelInfo, session: SessionInfo) -> dict[str, Any]:
    return {
        "kernel_id": str(kernel.id),
        "session_id": str(session.id),
        "reason": "USER_REQUESTED",
        "occupied_slots": kernel.occupied_slots.to_json(),
    }
