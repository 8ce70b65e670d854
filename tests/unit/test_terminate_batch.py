"""`sokovan.sessions.terminate` on stubs: many sessions, one answer each, one terminate run."""

from __future__ import annotations

import uuid
from dataclasses import replace

from sokovan.admission.batch import terminate_sessions
from sokovan.scheduler.handlers import schedule_sessions
from sokovan.stubs.ledger import InMemoryLedger
from sokovan.types import KernelStatus, RunStatus, SessionId, SessionStatus
from tests.terminate_stubs import TerminateStubs, in_memory_ledger


def _in(
    s: TerminateStubs[InMemoryLedger], sid: SessionId, status: SessionStatus, kernels: KernelStatus
) -> None:
    """Puts a session and its kernels in these statuses."""
    session = s.store.sessions[sid]
    moved = tuple(replace(k, status=kernels) for k in session.kernels)
    s.store.add_session(replace(session, status=status, kernels=moved))


async def test_sc_op_004_one_message_ends_many_each_answered_as_the_single_task() -> None:
    """SC-OP-004 on stubs: Given a RUNNING session on a1, one on a2, a PENDING one, a
    TERMINATED one and an unknown id (the RUNNING one named twice),
    when they are sent as one `sokovan.sessions.terminate`,
    then the answers come in the order sent: the two RUNNING ones terminating under one run
    id (the duplicate answered alike), the PENDING one CANCELLED with no agent called, the
    TERMINATED one a no-op that says so, the unknown id refused alone naming its index; one
    terminate run destroyed both kernels and ended both sessions."""
    s = TerminateStubs(in_memory_ledger)
    assert s.chord.ctx is not None
    s.coordinator.register(schedule_sessions.build(s.chord.ctx))
    r1, (k1,) = s.add_session(["a1"])
    r2, (k2,) = s.add_session(["a2"])
    pending, _ = s.add_session([None])
    done, _ = s.add_session(["a1"])
    _in(s, r1, SessionStatus.RUNNING, KernelStatus.RUNNING)
    _in(s, r2, SessionStatus.RUNNING, KernelStatus.RUNNING)
    _in(s, pending, SessionStatus.PENDING, KernelStatus.PENDING)
    _in(s, done, SessionStatus.TERMINATED, KernelStatus.TERMINATED)
    unknown = SessionId(uuid.uuid4())
    ids = [r1, pending, done, unknown, r2, r1]

    answer = await terminate_sessions(
        s.store, s.coordinator, (), {"session_ids": [str(i) for i in ids], "reason": "OPS"}
    )

    run_id = answer["run_id"]
    assert run_id is not None
    sessions = answer["sessions"]
    assert [a["session_id"] for a in sessions] == [str(i) for i in (r1, pending, done, r2, r1)]
    assert sessions[0] == {"session_id": str(r1), "terminating": True, "run_id": run_id,
                           "force": False}  # fmt: skip
    assert sessions[3]["terminating"] and sessions[4] == sessions[0]
    assert sessions[1]["status"] == "CANCELLED" and not sessions[1]["terminating"]
    assert "no agent was called" in sessions[1]["note"]
    assert sessions[2]["status"] == "TERMINATED" and "nothing to do" in sessions[2]["note"]
    (refused,) = answer["refused"]
    assert (refused["index"], refused["kind"], refused["field"]) == (
        3,
        "NotFound",
        "session_ids[3]",
    )
    assert str(unknown) in refused["error"]
    run = await s.ledger.get_run(run_id)
    assert (run.status, run.requested, run.succeeded) == (RunStatus.SUCCEEDED, 2, 2)
    assert s.destroyed() == sorted([str(k1), str(k2)])
    for sid in (r1, r2):
        ended = await s.store.get_session(sid)
        assert (ended.status, ended.status_info) == (SessionStatus.TERMINATED, "OPS")
    assert (await s.store.get_session(pending)).status == SessionStatus.CANCELLED


async def test_force_moves_the_deadline_of_those_already_terminating() -> None:
    """`force` on a batch: a session already TERMINATING is ended again with its deadline
    now (given up at once if its agent cannot destroy), as the single task does."""
    s = TerminateStubs(in_memory_ledger)
    stuck, _ = s.add_session(["a1"])
    answer = await terminate_sessions(
        s.store, s.coordinator, (), {"session_ids": [str(stuck)], "force": True}
    )
    (only,) = answer["sessions"]
    assert only["terminating"] and only["force"], answer
    assert "deadline_at" in s.store.sessions[stuck].status_data


async def test_a_malformed_batch_is_refused_whole_naming_the_field() -> None:
    """A batch with a malformed id, none at all, or over 1,000 is refused as a whole with the
    field named; nothing is ended."""
    s = TerminateStubs(in_memory_ledger)
    live, _ = s.add_session(["a1"])
    bad = await terminate_sessions(
        s.store, s.coordinator, (), {"session_ids": [str(live), "not-a-uuid"]}
    )
    assert bad["field"] == "session_ids[1]" and bad["kind"] == "InvalidRequest", bad
    empty = await terminate_sessions(s.store, s.coordinator, (), {"session_ids": []})
    assert empty["field"] == "session_ids", empty
    many = [str(uuid.uuid4()) for _ in range(1001)]
    over = await terminate_sessions(s.store, s.coordinator, (), {"session_ids": many})
    assert over["field"] == "session_ids", over
    assert s.destroyed() == []


async def test_a_batch_delivered_twice_ends_each_session_once() -> None:
    """A redelivered batch (a worker lost before its ack): the second delivery finds every
    session ended and says so; no kernel is destroyed twice and no second run is counted."""
    s = TerminateStubs(in_memory_ledger)
    assert s.chord.ctx is not None
    s.coordinator.register(schedule_sessions.build(s.chord.ctx))
    live, (kernel,) = s.add_session(["a1"])
    pending, _ = s.add_session([None])
    _in(s, live, SessionStatus.RUNNING, KernelStatus.RUNNING)
    _in(s, pending, SessionStatus.PENDING, KernelStatus.PENDING)
    message = {"session_ids": [str(live), str(pending)]}

    first = await terminate_sessions(s.store, s.coordinator, (), message)
    again = await terminate_sessions(s.store, s.coordinator, (), message)

    assert [a["terminating"] for a in first["sessions"]] == [True, False]
    assert again["run_id"] is None
    assert [(a["terminating"], a["status"]) for a in again["sessions"]] == [
        (False, "TERMINATED"),
        (False, "CANCELLED"),
    ]
    assert s.destroyed() == [str(kernel)]
    runs = [r.record for r in s.ledger.runs.values() if r.record.handler == "terminate_sessions"]
    assert [(r.id, r.succeeded) for r in runs] == [(first["run_id"], 1)]
