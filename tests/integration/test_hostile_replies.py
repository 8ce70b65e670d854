"""Hostile and malformed replies from a real reference agent over the real RPC (SC-FA-007/008).

Each hostile reply fails one call with a clear error; the next normal call to the same agent
through the same pool succeeds, on a connection made anew where the old one was broken.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sokovan.agent.pool import AgentClientPool, ClosableAgentClient, callosum_client_factory
from sokovan.agentd.frames import FrameKind
from sokovan.config import Settings
from sokovan.errors import AgentRemoteError, ReplyShapeError, UnknownAgent, WireError
from sokovan.scheduler.terminator.destroy import destroy_kernels_on_agent
from sokovan.types import AgentAddress, AgentId, ImageConfig, KernelId, SessionId
from tests.agents import AgentProcess, StartAgents, set_fault, start_agents

pytestmark = pytest.mark.integration
__all__ = ["start_agents"]  # the fixture, imported for pytest

ENVELOPE_KINDS = [
    FrameKind.HEADER_TYPE,
    FrameKind.HEADER_FUNCTION,
    FrameKind.HEADER_GARBAGE,
    FrameKind.HEADER_DEEP,
    FrameKind.HEADER_COMPRESSED,
    FrameKind.ENVELOPE_DEEP,
    FrameKind.BAD_META,
]
BODY_KINDS = [FrameKind.BODY_NOT_BYTES, FrameKind.BODY_GARBAGE, FrameKind.BODY_DEEP]
# What the agent's evil pickle would leave behind if anything unpickled it.
PWNED = Path("/tmp/sokovan-pwned")
HUGE = 5 * 1024 * 1024


class Directory:
    def __init__(self, agents: AgentProcess) -> None:
        self.agents = agents

    async def resolve(self, agent_id: AgentId) -> AgentAddress:
        if agent_id not in self.agents.agents:
            raise UnknownAgent(agent_id)
        return AgentAddress(agent_id, self.agents.addr(agent_id))


class CountingFactory:
    """Real callosum clients, counted: each count is one connection made."""

    def __init__(self, settings: Settings) -> None:
        self._connect = callosum_client_factory(settings)
        self.connects = 0

    async def __call__(self, address: AgentAddress) -> ClosableAgentClient:
        self.connects += 1
        return await self._connect(address)


def _pool(agents: AgentProcess) -> tuple[AgentClientPool, CountingFactory]:
    # A long call timeout: a wedged connection would show as AgentTimeout, never as these.
    settings = replace(Settings(), agent_call_timeout=60.0, agent_failure_threshold=3)
    factory = CountingFactory(settings)
    return AgentClientPool(Directory(agents), settings, factory), factory


def _forget_pwned() -> None:
    PWNED.unlink(missing_ok=True)


def _pwned() -> bool:
    return PWNED.exists()


async def _fault(agents: AgentProcess, op: dict[str, Any]) -> None:
    await set_fault(agents.redis_url, agents.id, op)


async def _running(pool: AgentClientPool, agent_id: AgentId, kernel: KernelId) -> bool | None:
    async with pool.acquire(agent_id) as client:
        return await client.check_running(kernel)


async def test_sc_fa_007_each_bad_envelope_fails_one_call_and_the_next_call_succeeds(
    start_agents: StartAgents,
) -> None:
    """SC-FA-007: a bad header type, a FUNCTION frame, garbage, 100k-deep nesting, a
    compressed claim or broken error metadata fail that call with a WireError (not a
    timeout); the connection is dropped, and the next call succeeds on a new one."""
    agents = await start_agents(agent_id="hostile-env")
    agent_id, kernel = AgentId(agents.id), KernelId(uuid.uuid4())
    pool, factory = _pool(agents)
    assert await _running(pool, agent_id, kernel) is False
    for kind in ENVELOPE_KINDS:
        await _fault(agents, {"op": "frame", "method": "check_running", "kind": kind})
        async with pool.acquire(agent_id) as client:
            with pytest.raises(WireError, match="malformed reply frame") as caught:
                await client.check_running(kernel)
        assert "check_running" in str(caught.value), kind
        await _fault(agents, {"op": "clear", "method": "check_running"})
        assert await _running(pool, agent_id, kernel) is False, kind
    assert factory.connects == 1 + len(ENVELOPE_KINDS)
    await pool.close_all()


async def test_sc_fa_007_undecodable_and_pickled_bodies_fail_one_call(
    start_agents: StartAgents,
) -> None:
    """SC-FA-007: a result body that is not bytes, not msgpack, 100k deep, or a pickle
    ext type with a payload fails that call with a WireError; nothing is unpickled; the
    next call succeeds."""
    _forget_pwned()
    agents = await start_agents(agent_id="hostile-body")
    agent_id, kernel = AgentId(agents.id), KernelId(uuid.uuid4())
    pool, _ = _pool(agents)
    for kind in [*BODY_KINDS, FrameKind.BODY_PICKLE]:
        await _fault(agents, {"op": "frame", "method": "check_running", "kind": kind})
        with pytest.raises(WireError, match="check_running") as caught:
            await _running(pool, agent_id, kernel)
        if kind is FrameKind.BODY_PICKLE:
            assert isinstance(caught.value, ReplyShapeError)
            assert "OpaqueExt" in str(caught.value)
        await _fault(agents, {"op": "clear", "method": "check_running"})
        assert await _running(pool, agent_id, kernel) is False, kind
    assert not _pwned()
    await pool.close_all()


async def test_sc_fa_007_a_cancelled_reply_is_an_agent_error_not_our_cancellation(
    start_agents: StartAgents,
) -> None:
    """SC-FA-007: an agent answering CANCELLED does not cancel the caller's task."""
    agents = await start_agents(agent_id="hostile-cancel")
    agent_id, kernel = AgentId(agents.id), KernelId(uuid.uuid4())
    pool, _ = _pool(agents)
    await _fault(agents, {"op": "frame", "method": "check_running", "kind": "cancelled"})
    with pytest.raises(AgentRemoteError, match="cancelled"):
        await _running(pool, agent_id, kernel)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await _fault(agents, {"op": "clear"})
    assert await _running(pool, agent_id, kernel) is False
    await pool.close_all()


async def _ask_eight(agents: AgentProcess, kind: str) -> list[bool | BaseException | None]:
    """Eight concurrent check_running calls on one lease; the fourth gets a `kind` frame."""
    agent_id = AgentId(agents.id)
    kernels = [KernelId(uuid.uuid4()) for _ in range(8)]
    pool, factory = _pool(agents)
    op = {"op": "frame", "method": "check_running", "kind": kind, "kernels": [str(kernels[3])]}
    await _fault(agents, op)
    async with pool.acquire(agent_id) as client:
        answers = await asyncio.gather(
            *(client.check_running(k) for k in kernels), return_exceptions=True
        )
    assert await _running(pool, agent_id, kernels[0]) is False
    assert factory.connects == 2
    await pool.close_all()
    return answers


async def test_sc_fa_007_a_bad_frame_naming_its_call_fails_that_call_only(
    start_agents: StartAgents,
) -> None:
    """SC-FA-007: among concurrent calls on one connection, a malformed reply whose header
    names its call fails that call alone; the others get their answers; the failure counts
    once and the next lease gets a new connection."""
    agents = await start_agents(agent_id="hostile-one")
    answers = await _ask_eight(agents, "header_type")
    assert isinstance(answers[3], WireError) and "malformed reply frame" in str(answers[3])
    assert answers[:3] + answers[4:] == [False] * 7


async def test_sc_fa_007_an_anonymous_bad_frame_fails_only_the_calls_of_its_connection(
    start_agents: StartAgents,
) -> None:
    """SC-FA-007: a frame whose header is garbage cannot say which call it answers: the
    connection is dropped, its waiting calls end with a WireError (none hangs until the
    timeout), the failure counts once, and the next call succeeds."""
    agents = await start_agents(agent_id="hostile-anon")
    answers = await _ask_eight(agents, "header_garbage")
    assert isinstance(answers[3], WireError)
    assert all(a is False or isinstance(a, WireError) for a in answers), answers


WRONG_SHAPES: list[tuple[str, Any, str]] = [
    ("check_and_pull", ["not", "a", "mapping"], "a mapping of image name"),
    ("check_and_pull", {"img:1": 3}, "a mapping of image name"),
    ("check_running", "yes", "a bool or None"),
    ("check_running", 1, "a bool or None"),
    ("create_kernels", {"id": "k"}, "a list of mappings"),
    ("create_kernels", [1, 2], "a list of mappings"),
    ("assign_port", 0, "an int port in 1..65535"),
    ("assign_port", 70000, "an int port in 1..65535"),
    ("assign_port", "8080", "an int port in 1..65535"),
    ("assign_port", True, "an int port in 1..65535"),
    # SC-CV-009: a real agent's destroy_kernel answers None, and only None.
    ("destroy_kernel", {"odd": [1]}, "None"),
    ("destroy_kernel", [[["deep"]]], "None"),
]


async def _call(pool: AgentClientPool, agent_id: AgentId, method: str) -> Any:
    image = ImageConfig("cr.backend.ai/stable/python:3.12")
    async with pool.acquire(agent_id) as client:
        if method == "check_and_pull":
            return await client.check_and_pull({image.canonical: image})
        if method == "check_running":
            return await client.check_running(KernelId(uuid.uuid4()))
        if method == "create_kernels":
            kernel = KernelId(uuid.uuid4())
            return await client.create_kernels(
                SessionId(uuid.uuid4()), [kernel], [{}], {}, {kernel: image}
            )
        if method == "destroy_kernel":
            sid = SessionId(uuid.uuid4())
            return await client.destroy_kernel(KernelId(uuid.uuid4()), sid, "USER_REQUESTED")
        return await client.assign_port()


async def test_sc_fa_008_wrong_shapes_fail_naming_method_and_shape(
    start_agents: StartAgents,
) -> None:
    """SC-FA-008: each method's wrong-shaped reply fails with a ReplyShapeError naming the
    method and the expected shape; the next normal call succeeds."""
    agents = await start_agents(agent_id="hostile-shape")
    agent_id = AgentId(agents.id)
    pool, _ = _pool(agents)
    for method, value, expected in WRONG_SHAPES:
        await _fault(agents, {"op": "answer", "method": method, "value": value})
        with pytest.raises(ReplyShapeError) as caught:
            await _call(pool, agent_id, method)
        assert caught.value.method == method
        assert method in str(caught.value) and expected in str(caught.value), str(caught.value)
        await _fault(agents, {"op": "clear", "method": method})
        next_method = "check_running" if method == "create_kernels" else method
        answer = await _call(pool, agent_id, next_method)
        assert answer is not None or method in ("check_running", "destroy_kernel")
    assert await _call(pool, agent_id, "destroy_kernel") is None
    await pool.close_all()


async def test_sc_fa_007_huge_error_text_is_bounded_and_not_counted(
    start_agents: StartAgents,
) -> None:
    """SC-FA-007: a 5 MB error text from the agent reaches the outcome cut to ~2 KiB; as the
    agent's own error it neither counts toward unavailability nor drops the connection."""
    agents = await start_agents(agent_id="hostile-text")
    agent_id = AgentId(agents.id)
    pool, factory = _pool(agents)
    await _fault(agents, {"op": "fail", "method": "destroy_kernel", "message": "x" * HUGE})
    items = [
        {"kernel_id": str(uuid.uuid4()), "session_id": str(uuid.uuid4()), "reason": "X"}
        for _ in range(4)
    ]
    outcomes = await destroy_kernels_on_agent(pool, agent_id, items, 2)
    assert [o.ok for o in outcomes] == [False] * 4
    for outcome in outcomes:
        assert outcome.error is not None and "InjectedFault" in outcome.error
        assert len(outcome.error.encode()) < 3000
        assert outcome.error.endswith("bytes cut)")
    await _fault(agents, {"op": "clear"})
    outcomes = await destroy_kernels_on_agent(pool, agent_id, items, 2)
    assert [o.ok for o in outcomes] == [True] * 4
    assert factory.connects == 1
    await pool.close_all()
