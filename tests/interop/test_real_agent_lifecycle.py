"""A real Backend.AI agent driven by the whole scheduler: submit, RUNNING, terminate."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sokovan.agent.client import CallosumAgentClient
from sokovan.db.repository import SchedulerRepository
from sokovan.records import AgentRow
from sokovan.types import (
    AgentId,
    ImageConfig,
    KernelId,
    KernelStatus,
    ResourceSlot,
    SessionId,
    SessionStatus,
)
from tasks.app import create_app
from tests.interop.conftest import RealAgent
from tests.workers import celery_worker, make_env, wait_for

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300), pytest.mark.xdist_group("interop")]

IMAGE = "cr.backend.ai/stable/python:3.9-ubuntu20.04"


async def test_one_kernel_session_on_a_real_agent_runs_then_terminates(
    tmp_path: Path, valkey_url: str, real_agent: RealAgent
) -> None:
    """Submit -> RUNNING -> terminate -> TERMINATED through a real worker and a real agent.

    The scheduler's own launcher builds the kernel config, the worker's client sends
    create_kernels (with the ImageRef the agent unpickles) and destroy_kernel; the agent
    itself then says the kernel no longer runs."""
    # A real agent's destroy_kernel waits for the container to go: the default call timeout.
    senv = make_env(tmp_path, valkey_url, agent_call_timeout="30")
    repo = SchedulerRepository(senv.engine)
    repo.add_image(ImageConfig(canonical=IMAGE))
    repo.upsert_agent(
        AgentRow(
            AgentId(real_agent.agent_id),
            real_agent.rpc_addr,
            capacity=ResourceSlot.from_json({"cpu": "4", "mem": "8589934592"}),
        )
    )
    app = create_app(senv.settings)
    with celery_worker(senv):
        answer = app.send_task(
            "sokovan.session.create",
            kwargs={"request": {"image": IMAGE, "agents": [real_agent.agent_id], "name": "real"}},
        ).get(timeout=60)
        assert "session_id" in answer, answer
        sid = SessionId(uuid.UUID(answer["session_id"]))
        wait_for(
            lambda: (
                repo.get_session(sid).status
                in (SessionStatus.RUNNING, SessionStatus.TERMINATING, SessionStatus.TERMINATED)
            ),
            timeout=120,
            what="the session to start on the real agent",
        )
        session = repo.get_session(sid)
        assert session.status == SessionStatus.RUNNING, repo.session_status_data(sid)
        (kernel,) = session.kernels
        assert await _running(real_agent, kernel.id) is True
        answer = app.send_task("sokovan.session.terminate", kwargs={"session_id": str(sid)}).get(
            timeout=60
        )
        assert answer["terminating"] is True
        wait_for(
            lambda: repo.get_session(sid).status == SessionStatus.TERMINATED,
            timeout=120,
            what="the session to terminate on the real agent",
        )
    assert repo.get_session(sid).kernels[0].status == KernelStatus.TERMINATED
    assert await _running(real_agent, kernel.id) is False


async def _running(agent: RealAgent, kernel_id: KernelId) -> bool | None:
    """What the agent itself says, over a client of the test's own."""
    client = CallosumAgentClient(AgentId(agent.agent_id), agent.rpc_addr, call_timeout=30.0)
    await client.connect()
    try:
        return await client.check_running(kernel_id)
    finally:
        await client.close()
