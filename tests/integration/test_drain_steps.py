"""A drain's steps on a real migrated SQLite database, no worker: what SQL says remains."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from sokovan import constants as C
from sokovan.db.engine import create_engine, upgrade
from sokovan.db.offload import OffloadedStore
from sokovan.db.repository import NewKernel, SchedulerRepository
from sokovan.records import AgentRow
from sokovan.scheduler.deadlines import parse_time
from sokovan.scheduler.maintenance import DrainMode, continue_drains, drain
from sokovan.types import (
    AgentId,
    KernelId,
    KernelStatus,
    ResourceSlot,
    SessionId,
    SessionStatus,
    utcnow,
)

pytestmark = pytest.mark.integration

A1, A2 = AgentId("a1"), AgentId("a2")


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[SchedulerRepository]:
    engine = create_engine(f"sqlite:///{tmp_path / 'drain.db'}")
    upgrade(engine)
    repo = SchedulerRepository(engine)
    for agent in (A1, A2):
        repo.upsert_agent(AgentRow(agent, "tcp://127.0.0.1:1"))
    yield repo
    engine.dispose()


def running_on(repo: SchedulerRepository, agent: AgentId, count: int) -> list[SessionId]:
    sids = []
    for n in range(count):
        sid = SessionId(uuid.uuid4())
        kernel = NewKernel(KernelId(uuid.uuid4()), agent, "img", ResourceSlot.from_json({}))
        repo.create_session(
            session_id=sid, name=f"s{n}", kernels_=[kernel], status=SessionStatus.RUNNING
        )
        sids.append(sid)
    return sids


def end_kernels(repo: SchedulerRepository, sids: list[SessionId]) -> None:
    kernels = [k.id for s in repo.sessions_by_ids(sids) for k in s.kernels]
    repo.transition_kernels(kernels, KernelStatus.TERMINATED, list(KernelStatus))


async def test_terminate_drain_moves_sessions_and_bounds_their_deadline(
    repo: SchedulerRepository,
) -> None:
    """SC-OP-002: a drain cordons, moves the agent's sessions to TERMINATING (AGENT_DRAINED)
    with a deadline no later than its own, leaves other agents alone, and ends once empty."""
    on_a1, on_a2 = running_on(repo, A1, 3), running_on(repo, A2, 1)
    deadline = utcnow() + timedelta(minutes=10)
    early = utcnow() + timedelta(minutes=1)
    repo.set_session_deadline(on_a1[0], early)  # an earlier deadline is kept

    step = await drain(OffloadedStore(repo), A1, DrainMode.TERMINATE, deadline)
    assert set(step.terminating) == set(on_a1) and not step.done
    assert repo.get_agent(A1).maintenance == "draining"
    sessions = {s.id: s for s in repo.sessions_by_ids([*on_a1, *on_a2])}
    for sid in on_a1:
        assert sessions[sid].status == SessionStatus.TERMINATING
        assert sessions[sid].status_info == C.AGENT_DRAINED_REASON
    assert parse_time(sessions[on_a1[0]].status_data["deadline_at"]) == early
    assert parse_time(sessions[on_a1[1]].status_data["deadline_at"]) == deadline
    assert sessions[on_a2[0]].status == SessionStatus.RUNNING

    end_kernels(repo, on_a1)
    (last,) = await continue_drains(OffloadedStore(repo))
    assert last.done and repo.get_agent(A1).maintenance == "drained"
    assert await continue_drains(OffloadedStore(repo)) == []


async def test_a_drain_whose_worker_died_before_moving_anything_is_carried_on(
    repo: SchedulerRepository,
) -> None:
    """SC-OP-002: only the intent reached SQL (the worker died right after); the next
    check_agents step finds the agent's sessions and moves them."""
    sids = running_on(repo, A1, 2)
    repo.start_drain(A1, str(DrainMode.TERMINATE), utcnow() + timedelta(minutes=5))
    (step,) = await continue_drains(OffloadedStore(repo))
    assert set(step.terminating) == set(sids)
    assert {s.status for s in repo.sessions_by_ids(sids)} == {SessionStatus.TERMINATING}


async def test_wait_for_sessions_ends_nothing_before_the_deadline(
    repo: SchedulerRepository,
) -> None:
    """SC-OP-002 `--wait-for-sessions`: sessions run on until the deadline, then what is left
    goes TERMINATING with the deadline already past (the forced path)."""
    sids = running_on(repo, A1, 2)
    step = await drain(OffloadedStore(repo), A1, DrainMode.WAIT, utcnow() + timedelta(minutes=5))
    assert step.terminating == () and len(step.live_sessions) == 2
    assert {s.status for s in repo.sessions_by_ids(sids)} == {SessionStatus.RUNNING}
    end_kernels(repo, sids[:1])
    past = utcnow() - timedelta(seconds=1)
    repo.start_drain(A1, str(DrainMode.WAIT), past)
    (step,) = await continue_drains(OffloadedStore(repo))
    assert step.terminating == (sids[1],)
    (left,) = repo.sessions_by_ids([sids[1]])
    assert left.status == SessionStatus.TERMINATING
    assert parse_time(left.status_data["deadline_at"]) == past


async def test_uncordon_stops_a_drain(repo: SchedulerRepository) -> None:
    running_on(repo, A1, 1)
    repo.start_drain(A1, str(DrainMode.WAIT), utcnow() + timedelta(minutes=5))
    repo.uncordon_agent(A1)
    row = repo.get_agent(A1)
    assert (row.schedulable, row.maintenance, row.drain_deadline) == (True, "none", None)
    assert await continue_drains(OffloadedStore(repo)) == []
