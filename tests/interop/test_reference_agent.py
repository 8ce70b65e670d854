"""The same client drives the reference agent (sokovan.agentd) as it drives a real one."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from sokovan.agent.client import CallosumAgentClient
from sokovan.errors import AgentUnavailable
from sokovan.types import AgentId, ImageConfig, KernelId, SessionId
from tests.conftest import free_port
from tests.interop.kernel_config import cluster_info, kernel_config

pytestmark = [pytest.mark.interop, pytest.mark.xdist_group("interop")]

IMAGE = ImageConfig("cr.backend.ai/stable/python:3.9-ubuntu20.04")
AGENT_ID = AgentId("i-reference-1")


@pytest.fixture(scope="module")
def reference_agent(valkey_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A reference agent process (sim runtime) on a free port; its log goes to a file."""
    port = free_port()
    command = [sys.executable, "-m", "sokovan.agentd", "run", "--id", AGENT_ID]
    command += ["--port", str(port), "--redis-url", valkey_url]
    log_path = tmp_path_factory.mktemp("agentd") / "agentd.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        yield f"tcp://127.0.0.1:{port}"
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def client(reference_agent: str) -> AsyncIterator[CallosumAgentClient]:
    c = CallosumAgentClient(AGENT_ID, reference_agent, call_timeout=10, connect_timeout=1)
    for _ in range(30):  # the process needs a moment to bind
        try:
            await c.connect()
            break
        except AgentUnavailable:
            c = CallosumAgentClient(AGENT_ID, reference_agent, call_timeout=10, connect_timeout=1)
            await asyncio.sleep(0.2)
    else:
        pytest.fail(f"the reference agent did not answer at {reference_agent}")
    yield c
    await c.close()


async def test_reference_agent_methods(client: CallosumAgentClient) -> None:
    assert await client.ping("hi") == "hi"
    assert (await client.health())["status"] == "ok"
    assert isinstance(await client.assign_port(), int)
    await client.create_local_network(f"net-{uuid.uuid4().hex[:8]}")
    assert set(await client.check_and_pull({IMAGE.canonical: IMAGE})) == {IMAGE.canonical}


async def test_reference_agent_kernel_lifecycle(
    client: CallosumAgentClient, reference_agent: str
) -> None:
    session_id, kernel_id = SessionId(uuid.uuid4()), KernelId(uuid.uuid4())
    config = kernel_config(kernel_id, session_id, IMAGE, reference_agent)
    created = await client.create_kernels(
        session_id, [kernel_id], [config], cluster_info(), {kernel_id: IMAGE}
    )
    assert [item["id"] for item in created] == [str(kernel_id)]
    assert await client.check_running(kernel_id) is True
    await client.destroy_kernel(kernel_id, session_id, "user-requested")
    assert await client.check_running(kernel_id) is False
