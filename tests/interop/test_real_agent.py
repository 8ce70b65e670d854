"""Our agent client against a real Backend.AI agent 26.9 (dummy backend) over its real RPC."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import zmq

from sokovan.agent.client import CallosumAgentClient
from sokovan.agent.curve import CurveKeys, load_manager_cert, load_public_key
from sokovan.agent.pool import AgentClientPool
from sokovan.config import Settings
from sokovan.errors import AgentRemoteError, AgentUnavailable, UnknownAgent
from sokovan.types import AgentAddress, AgentId, ImageConfig, KernelId, SessionId
from tests.interop.conftest import RealAgent
from tests.interop.kernel_config import cluster_info, kernel_config

pytestmark = [pytest.mark.interop, pytest.mark.xdist_group("interop")]

IMAGE = ImageConfig("cr.backend.ai/stable/python:3.9-ubuntu20.04")
CALL_TIMEOUT = 30.0


@pytest.fixture
async def client(real_agent: RealAgent) -> AsyncIterator[CallosumAgentClient]:
    c = CallosumAgentClient(
        AgentId(real_agent.agent_id), real_agent.rpc_addr, call_timeout=CALL_TIMEOUT
    )
    await c.connect()
    yield c
    await c.close()


def curve_keys(agent: RealAgent) -> CurveKeys:
    assert agent.manager_secret_key and agent.agent_public_key
    public, secret = load_manager_cert(agent.manager_secret_key)
    return CurveKeys(public, secret, load_public_key(agent.agent_public_key))


async def test_ping_echoes(client: CallosumAgentClient) -> None:
    word = f"hello-{uuid.uuid4()}"
    assert await client.ping(word) == word


async def test_health_reports_version_and_status(client: CallosumAgentClient) -> None:
    report = await client.health()
    assert report["component"] == "agent"
    assert str(report["version"]).startswith("26.9")
    assert report["status"] == "ok"


async def test_assign_port_gives_distinct_ports(client: CallosumAgentClient) -> None:
    first, second = await client.assign_port(), await client.assign_port()
    assert isinstance(first, int) and isinstance(second, int)
    assert first != second


async def test_create_and_destroy_local_network(client: CallosumAgentClient) -> None:
    name = f"net-{uuid.uuid4().hex[:12]}"
    await client.create_local_network(name)
    await client.call("destroy_local_network", name)


async def test_check_and_pull_answers_per_image(client: CallosumAgentClient) -> None:
    answer = await client.check_and_pull({IMAGE.canonical: IMAGE})
    assert set(answer) == {IMAGE.canonical}
    assert answer[IMAGE.canonical]


async def test_kernel_lifecycle(client: CallosumAgentClient, real_agent: RealAgent) -> None:
    """create_kernels -> check_running True -> destroy_kernel -> check_running False.

    SC-CV-009: the real agent's destroy_kernel answers None, the one shape we accept."""
    session_id, kernel_id = SessionId(uuid.uuid4()), KernelId(uuid.uuid4())
    config = kernel_config(kernel_id, session_id, IMAGE, real_agent.rpc_addr)
    created = await client.create_kernels(
        session_id, [kernel_id], [config], cluster_info(), {kernel_id: IMAGE}
    )
    assert [item["id"] for item in created] == [str(kernel_id)]
    assert created[0]["resource_spec"]["slots"]["cpu"] == 1  # a pickled Decimal, read safely
    assert await client.check_running(kernel_id) is True
    # A real agent answers None (the client would refuse any other shape).
    reply = await client.call("destroy_kernel", str(kernel_id), str(session_id), "user-requested")
    assert reply is None
    assert await client.check_running(kernel_id) is False


async def test_destroy_of_absent_kernel_does_not_hang(client: CallosumAgentClient) -> None:
    kernel_id = KernelId(uuid.uuid4())
    try:
        await client.destroy_kernel(kernel_id, SessionId(uuid.uuid4()), "user-requested")
    except AgentRemoteError as e:
        assert e.name and e.method == "destroy_kernel"
    assert await client.check_running(kernel_id) is False


async def test_agent_side_exception_carries_its_name(
    client: CallosumAgentClient, real_agent: RealAgent
) -> None:
    session_id, kernel_id = SessionId(uuid.uuid4()), KernelId(uuid.uuid4())
    config = kernel_config(kernel_id, session_id, IMAGE, real_agent.rpc_addr)
    del config["resource_slots"]
    with pytest.raises(AgentRemoteError) as caught:
        await client.create_kernels(
            session_id, [kernel_id], [config], cluster_info(), {kernel_id: IMAGE}
        )
    assert caught.value.name == "KeyError"
    assert "resource_slots" in caught.value.message


async def test_curve_connection_with_the_right_keys(curve_agent: RealAgent) -> None:
    c = CallosumAgentClient(
        AgentId(curve_agent.agent_id),
        curve_agent.rpc_addr,
        call_timeout=CALL_TIMEOUT,
        curve=curve_keys(curve_agent),
    )
    await c.connect()
    try:
        assert await c.ping("curve") == "curve"
        assert await c.assign_port() > 0
    finally:
        await c.close()


async def test_curve_agent_refuses_a_client_without_keys(curve_agent: RealAgent) -> None:
    c = CallosumAgentClient(
        AgentId(curve_agent.agent_id), curve_agent.rpc_addr, call_timeout=5, connect_timeout=2
    )
    with pytest.raises(AgentUnavailable, match=r"(?i)curve|security handshake"):
        await c.connect()
    await c.close()


async def test_curve_agent_refuses_an_unknown_manager_key(curve_agent: RealAgent) -> None:
    right = curve_keys(curve_agent)
    public, secret = zmq.curve_keypair()
    wrong = CurveKeys(public, secret, right.agent_public)
    c = CallosumAgentClient(
        AgentId(curve_agent.agent_id),
        curve_agent.rpc_addr,
        call_timeout=5,
        connect_timeout=2,
        curve=wrong,
    )
    with pytest.raises(AgentUnavailable, match=r"(?i)authentication|wrong keys"):
        await c.connect()
    await c.close()


class OneAgentDirectory:
    def __init__(self, agent: RealAgent) -> None:
        self.agent = agent

    async def resolve(self, agent_id: AgentId) -> AgentAddress:
        if agent_id != self.agent.agent_id:
            raise UnknownAgent(agent_id)
        return AgentAddress(agent_id, self.agent.rpc_addr)


async def test_pool_reuses_one_connection_and_close_all_closes_it(real_agent: RealAgent) -> None:
    pool = AgentClientPool(OneAgentDirectory(real_agent), Settings())
    agent_id = AgentId(real_agent.agent_id)
    async with pool.acquire(agent_id) as first:
        assert await first.assign_port() > 0
    async with pool.acquire(agent_id) as second:
        assert second is first
    await pool.close_all()
    assert isinstance(first, CallosumAgentClient) and first.closed
    with pytest.raises(AgentUnavailable, match="closed"):
        await first.assign_port()
    async with pool.acquire(agent_id) as fresh:
        assert fresh is not first
        assert await fresh.assign_port() > 0
    await pool.close_all()


async def test_pool_with_curve_settings(curve_agent: RealAgent) -> None:
    settings = replace(
        Settings(),
        curve_manager_cert=curve_agent.manager_secret_key,
        curve_agent_public_key=curve_agent.agent_public_key,
    )
    pool = AgentClientPool(OneAgentDirectory(curve_agent), settings)
    async with pool.acquire(AgentId(curve_agent.agent_id)) as client:
        assert await client.assign_port() > 0
    await pool.close_all()


async def test_sc_op_008_get_logs_as_the_real_agent_serves_them(
    client: CallosumAgentClient, real_agent: RealAgent
) -> None:
    """SC-OP-008: get_logs(kernel_id) is a real agent's method; its reply passes our shape
    check as text, and an unknown kernel is the agent's own error, not a hang."""
    session_id, kernel_id = SessionId(uuid.uuid4()), KernelId(uuid.uuid4())
    config = kernel_config(kernel_id, session_id, IMAGE, real_agent.rpc_addr)
    await client.create_kernels(
        session_id, [kernel_id], [config], cluster_info(), {kernel_id: IMAGE}
    )
    try:
        logs = await client.get_logs(kernel_id)
        assert isinstance(logs, str) and logs
    finally:
        await client.destroy_kernel(kernel_id, session_id, "user-requested")
    with pytest.raises(AgentRemoteError) as caught:
        await client.get_logs(KernelId(uuid.uuid4()))
    assert caught.value.method == "get_logs"
