"""SC-FA-003 against a real Backend.AI agent: it refuses an agent id that is not its own."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sokovan.agent.pool import AgentClientPool
from sokovan.config import Settings
from sokovan.db.engine import create_engine, upgrade
from sokovan.db.offload import OffloadedStore
from sokovan.db.repository import SchedulerRepository
from sokovan.records import AgentRow
from sokovan.scheduler.liveness import ping_agent
from sokovan.scheduler.terminator import SessionTerminator
from sokovan.stubs.fanout import RefusingFanOut
from sokovan.stubs.presence import FakePresence
from sokovan.types import AgentId, KernelId, KernelInfo, SessionId
from tests.interop.conftest import RealAgent
from tests.sweep_stages import judge_stale_kernels

pytestmark = [pytest.mark.interop, pytest.mark.xdist_group("interop")]


async def test_sc_fa_003_real_agent_at_another_agents_address_kills_nothing(
    tmp_path: Path, real_agent: RealAgent
) -> None:
    """SC-FA-003: a kernel of agent X whose address a real agent (another id) now holds.

    Given X registered at the real agent's address, and a kernel of X with no presence,
    When stage 2 runs with identity checks,
    Then the real agent answers `health` (naming no id) but refuses check_running for X's
    id (AgentIdNotFoundError): the kernel is "identity", not dead. The agent's own id is
    verified the same way and its answer for an unknown kernel (False) does kill.
    """
    engine = create_engine(f"sqlite:///{tmp_path / 'field.db'}")
    upgrade(engine)
    repo = SchedulerRepository(engine)
    for agent_id in ("i-lost-x", real_agent.agent_id):
        repo.upsert_agent(AgentRow(AgentId(agent_id), real_agent.rpc_addr))
    pool = AgentClientPool(OffloadedStore(repo), Settings(agent_call_timeout=30))
    stranger = KernelInfo(KernelId(uuid.uuid4()), SessionId(uuid.uuid4()), AgentId("i-lost-x"))
    own = KernelInfo(KernelId(uuid.uuid4()), SessionId(uuid.uuid4()), AgentId(real_agent.agent_id))
    terminator = SessionTerminator(pool, FakePresence(), RefusingFanOut(), verify_identity=True)
    try:
        judgement = await judge_stale_kernels(terminator, [stranger, own])
    finally:
        await pool.close_all()
        engine.dispose()

    by_id = {e.kernel_id: e for e in judgement.candidates}
    assert by_id[stranger.id].answer == "identity"
    assert "AgentIdNotFoundError" in (by_id[stranger.id].identity or "")
    assert judgement.dead_kernel_ids == [own.id]


async def test_sc_cv_005_real_agent_refusing_an_id_is_no_contact_for_liveness(
    tmp_path: Path, real_agent: RealAgent
) -> None:
    """SC-CV-005 against a real agent: the liveness ping tells a stranger from the agent.

    Given X registered at the real agent's address (the real agent names no id in `health`),
    When the liveness check pings both ids,
    Then the ping for X fails ("refuses agent id", so X turns UNREACHABLE, then LOST, instead
    of staying ALIVE while the sweep cannot verify its kernels) and the real agent's own id
    answers, with no error.
    """
    engine = create_engine(f"sqlite:///{tmp_path / 'ping.db'}")
    upgrade(engine)
    repo = SchedulerRepository(engine)
    for agent_id in ("i-lost-x", real_agent.agent_id):
        repo.upsert_agent(AgentRow(AgentId(agent_id), real_agent.rpc_addr))
    pool = AgentClientPool(OffloadedStore(repo), Settings(agent_call_timeout=30))
    try:
        stranger = await ping_agent(pool, AgentId("i-lost-x"), 30)
        own = await ping_agent(pool, AgentId(real_agent.agent_id), 30)
    finally:
        await pool.close_all()
        engine.dispose()

    assert stranger.error is not None and "refuses agent id 'i-lost-x'" in stranger.error
    assert own.error is None, own
