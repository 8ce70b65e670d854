"""CallosumAgentClient against an in-process callosum server: error mapping and closing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from callosum.lower.zeromq import ZeroMQAddress, ZeroMQRPCTransport
from callosum.rpc import Peer, RPCMessage

from sokovan import constants as C
from sokovan.agent import wire
from sokovan.agent.client import CallosumAgentClient
from sokovan.errors import (
    AgentRemoteError,
    AgentTimeout,
    AgentUnavailable,
    ReplyShapeError,
    WireError,
)
from sokovan.types import AgentId, KernelId
from tests.conftest import free_port

Handler = Callable[[RPCMessage], Awaitable[Any]]
GARBAGE = b"\x92\x01"  # an array of two announced, one given


def garbage_or_packb(value: Any) -> bytes:
    return GARBAGE if value == "send-garbage" else wire.packb(value)


class ServerState:
    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()


def handlers(state: ServerState) -> dict[str, Handler]:
    async def ping(request: RPCMessage) -> Any:
        body: Any = request.body
        state.bodies.append(body)
        return body["args"][0]

    async def check_running(request: RPCMessage) -> Any:
        state.bodies.append(request.body)
        state.arrived.set()
        await state.release.wait()
        return True

    async def assign_port(request: RPCMessage) -> Any:
        raise KeyError("no free port")

    async def health(request: RPCMessage) -> Any:
        return "send-garbage"

    async def get_logs(request: RPCMessage) -> Any:
        body: Any = request.body
        state.bodies.append(body)
        kernel = body["args"][0]
        if kernel.startswith("0"):
            return {"logs": 5}
        return {"logs": "".join(f"line {i}\n" for i in range(200_000))}

    return {
        "ping": ping,
        "check_running": check_running,
        "assign_port": assign_port,
        "health": health,
        "get_logs": get_logs,
    }


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, ServerState]]:
    addr = f"tcp://127.0.0.1:{free_port()}"
    state = ServerState()
    peer = Peer(
        bind=ZeroMQAddress(addr),
        transport=ZeroMQRPCTransport,
        serializer=garbage_or_packb,
        deserializer=wire.unpackb,
    )
    for name, handler in handlers(state).items():
        peer.handle_function(name, handler)
    async with peer:
        yield addr, state
        state.release.set()


async def connected(addr: str, call_timeout: float = 10.0) -> CallosumAgentClient:
    client = CallosumAgentClient(AgentId("i-test"), addr, call_timeout=call_timeout)
    await client.connect()
    return client


async def test_request_body_shape_and_ping(server: tuple[str, ServerState]) -> None:
    addr, state = server
    client = await connected(addr)
    assert await client.ping("hi") == "hi"
    assert state.bodies == [{"args": ["hi"], "kwargs": {}, "metadata": {}}]
    await client.close()


async def test_agent_exception_becomes_remote_error(server: tuple[str, ServerState]) -> None:
    client = await connected(server[0])
    with pytest.raises(AgentRemoteError) as caught:
        await client.assign_port()
    assert caught.value.name == "KeyError"
    assert "no free port" in caught.value.message
    assert caught.value.method == "assign_port"
    await client.close()


async def test_undecodable_reply_is_a_wire_error_and_the_client_still_works(
    server: tuple[str, ServerState],
) -> None:
    client = await connected(server[0])
    with pytest.raises(WireError):
        await client.health()
    assert await client.ping("still here") == "still here"
    await client.close()


async def test_slow_reply_is_a_timeout(server: tuple[str, ServerState]) -> None:
    client = await connected(server[0], call_timeout=0.2)
    with pytest.raises(AgentTimeout, match="check_running"):
        await client.check_running(KernelId(uuid.uuid4()))
    await client.close()


async def test_sc_ws_007_close_fails_the_call_in_flight(server: tuple[str, ServerState]) -> None:
    """SC-WS-007: closing a client in use ends the running call with a clear error, not a hang."""
    addr, state = server
    client = await connected(addr, call_timeout=60)
    call = asyncio.create_task(client.check_running(KernelId(uuid.uuid4())))
    await state.arrived.wait()
    await client.close()
    with pytest.raises(AgentUnavailable, match="closed during check_running"):
        await asyncio.wait_for(call, timeout=10)
    with pytest.raises(AgentUnavailable, match="closed"):
        await client.ping("after close")


async def test_nothing_listening_is_unavailable() -> None:
    client = CallosumAgentClient(
        AgentId("i-none"), f"tcp://127.0.0.1:{free_port()}", call_timeout=1, connect_timeout=0.5
    )
    with pytest.raises(AgentUnavailable, match="nothing answers"):
        await client.connect()
    await client.close()


async def test_sc_op_008_get_logs_reply_is_checked_and_bounded(
    server: tuple[str, ServerState],
) -> None:
    """SC-OP-008: get_logs sends (kernel_id, agent_id=...) as a Backend.AI agent takes it; a
    reply that is not {"logs": str} is a ReplyShapeError; a long log keeps its tail, bounded."""
    addr, state = server
    client = await connected(addr)
    kernel = KernelId(uuid.UUID("1" * 32))
    logs = await client.get_logs(kernel)
    sent = {"args": [str(kernel)], "kwargs": {"agent_id": "i-test"}, "metadata": {}}
    assert state.bodies[-1] == sent
    assert len(logs.encode()) <= C.KERNEL_LOGS_MAX_BYTES
    assert logs.startswith("line ") and logs.endswith("line 199999\n")
    with pytest.raises(ReplyShapeError, match="get_logs"):
        await client.get_logs(KernelId(uuid.UUID("0" * 32)))
    await client.close()
