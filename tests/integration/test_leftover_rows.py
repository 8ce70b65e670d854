"""Leftover rows in SQL: kept as they were or reopened when a container appears after its
kernel ended, and the slots a kernel holds while its container may run (SC-CV-003, a create
still in flight)."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from sokovan.db.repository import NewKernel, SchedulerRepository
from sokovan.records import CREATE_IN_FLIGHT, CREATED_AFTER_END, AgentRow, Leftover
from sokovan.types import (
    AgentId,
    ImageConfig,
    KernelId,
    KernelStatus,
    ResourceSlot,
    SessionId,
    SessionStatus,
    utcnow,
)


def assert_leftovers_hold_slots(engine: sa.Engine) -> None:
    """A terminated kernel whose create may have left a container holds its slots until its
    leftover closes; a forced kernel's leftover frees them (as documented); a destroyed
    leftover stays closed unless reopened."""
    repo = SchedulerRepository(engine)
    agent = AgentId(f"held-{uuid.uuid4().hex[:8]}")
    repo.upsert_agent(AgentRow(agent, "tcp://127.0.0.1:5"))
    repo.add_image(ImageConfig(canonical="img:1"))
    sid = SessionId(uuid.uuid4())
    in_flight, forced = KernelId(uuid.uuid4()), KernelId(uuid.uuid4())
    one_core = ResourceSlot.from_json({"cpu": "1"})
    repo.create_session(
        session_id=sid,
        name="held",
        status=SessionStatus.TERMINATED,
        kernels_=[NewKernel(k, agent, "img:1", one_core) for k in (in_flight, forced)],
    )
    repo.transition_kernels([in_flight, forced], KernelStatus.TERMINATED, list(KernelStatus))
    assert agent not in repo.occupied_by_agent_grouped()

    now = utcnow()
    repo.remember_leftovers(
        [
            Leftover(in_flight, sid, agent, CREATE_IN_FLIGHT, now, 0, None),
            Leftover(forced, sid, agent, "FORCE_TERMINATED", now, 0, None),
        ]
    )
    assert repo.occupied_by_agent_grouped()[agent] == one_core
    assert repo.occupied_by_agent()[agent] == one_core

    repo.leftovers_destroyed([in_flight])
    assert agent not in repo.occupied_by_agent_grouped()
    repo.remember_leftovers([Leftover(in_flight, sid, agent, CREATED_AFTER_END, now, 0, None)])
    [kept] = repo.leftovers([in_flight])
    assert kept.reason == CREATE_IN_FLIGHT and kept.destroyed_at is not None

    repo.remember_leftovers(
        [Leftover(in_flight, sid, agent, CREATED_AFTER_END, now, 0, None)], reopen=True
    )
    [again] = repo.leftovers([in_flight])
    assert again.reason == CREATED_AFTER_END and again.destroyed_at is None
    assert in_flight in {x.kernel_id for x in repo.leftovers_due(now)}
    assert repo.occupied_by_agent_grouped()[agent] == one_core


def test_leftovers_hold_slots_on_sqlite(engine: sa.Engine) -> None:
    assert_leftovers_hold_slots(engine)
