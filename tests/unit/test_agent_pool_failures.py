"""The pool counts connection failures of calls whose errors the borrower catches (SC-FA-007)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import pytest

from sokovan.agent.pool import AgentClientPool
from sokovan.config import Settings
from sokovan.errors import (
    AgentError,
    AgentRemoteError,
    AgentTimeout,
    AgentUnavailable,
    ReplyShapeError,
    WireError,
)
from sokovan.stubs.agents import FakeAgentClient
from sokovan.types import AgentAddress, AgentId, KernelId

A1 = AgentId("a1")


class ObservedClient(FakeAgentClient):
    """Reports each check_running outcome to its observer, as CallosumAgentClient does."""

    def __init__(self, agent_id: AgentId) -> None:
        super().__init__(agent_id)
        self.observer = None
        self.broken: str | None = None

    async def check_running(self, kernel_id: KernelId) -> bool | None:
        try:
            running = await super().check_running(kernel_id)
        except AgentError as e:
            if self.observer is not None:
                self.observer(e)
            raise
        if self.observer is not None:
            self.observer(None)
        return running


class Factory:
    def __init__(self) -> None:
        self.made: list[ObservedClient] = []

    async def __call__(self, address: AgentAddress) -> ObservedClient:
        client = ObservedClient(address.agent_id)
        self.made.append(client)
        return client


class Directory:
    async def resolve(self, agent_id: AgentId) -> AgentAddress:
        return AgentAddress(agent_id, f"tcp://127.0.0.1/{agent_id}")


def make_pool(factory: Factory) -> AgentClientPool:
    settings = replace(Settings(), agent_failure_threshold=3, agent_recovery=30.0)
    return AgentClientPool(Directory(), settings, factory, clock=lambda: 1000.0)


async def ask_catching(pool: AgentClientPool, times: int = 1) -> list[object]:
    """Calls inside one lease and catches every error, as the sweep and terminator do."""
    answers: list[object] = []
    async with pool.acquire(A1) as client:
        for _ in range(times):
            try:
                answers.append(await client.check_running(KernelId(uuid.uuid4())))
            except AgentError as e:
                answers.append(e)
    return answers


async def test_sc_fa_007_caught_timeouts_count_toward_the_threshold() -> None:
    """SC-FA-007: timeouts the borrower catches still mark the agent after the threshold."""
    factory = Factory()
    pool = make_pool(factory)
    await ask_catching(pool)
    factory.made[0].script("check_running", AgentTimeout("no reply"))
    await ask_catching(pool, times=3)
    assert factory.made[0].closed == 1
    with pytest.raises(AgentUnavailable, match="marked unavailable after 3"):
        await ask_catching(pool)


async def test_sc_fa_007_caught_wire_error_drops_the_connection_once() -> None:
    """SC-FA-007: a bad frame drops the connection; its sharers' errors count once; the next
    lease gets a new connection and the agent is not marked."""
    factory = Factory()
    pool = make_pool(factory)
    await ask_catching(pool)
    factory.made[0].script("check_running", WireError("malformed reply frame"))
    answers = await ask_catching(pool, times=5)
    assert all(isinstance(a, WireError) for a in answers)
    assert factory.made[0].closed == 1
    assert await ask_catching(pool) == [True]
    assert len(factory.made) == 2 and factory.made[1].closed == 0


async def test_sc_fa_008_reply_shape_errors_drop_the_connection_too() -> None:
    """SC-FA-008: a wrong-shaped reply is a wire fault: counted, connection made anew."""
    factory = Factory()
    pool = make_pool(factory)
    await ask_catching(pool)
    factory.made[0].script("check_running", ReplyShapeError("bad", "check_running", "a bool"))
    await ask_catching(pool)
    await ask_catching(pool)
    assert len(factory.made) == 2


async def test_sc_fa_007_agent_errors_never_count() -> None:
    """SC-FA-007: the agent's own exceptions say it is reachable: never counted or dropped."""
    factory = Factory()
    pool = make_pool(factory)
    await ask_catching(pool)
    factory.made[0].script("check_running", AgentRemoteError("KeyError", "x" * 5000))
    for _ in range(5):
        answers = await ask_catching(pool, times=3)
        assert all(isinstance(a, AgentRemoteError) for a in answers)
    assert len(factory.made) == 1 and factory.made[0].closed == 0


async def test_sc_fa_007_a_success_resets_the_count() -> None:
    factory = Factory()
    pool = make_pool(factory)
    await ask_catching(pool)
    client = factory.made[0]
    for _ in range(4):
        client.script("check_running", AgentTimeout("no reply"))
        await ask_catching(pool, times=2)
        client.script("check_running", True)
        assert await ask_catching(pool) == [True]
    assert len(factory.made) == 1


async def test_sc_fa_007_a_broken_idle_connection_is_replaced_at_checkout() -> None:
    """SC-FA-007: a connection whose receive loop stopped while idle is not lent again."""
    factory = Factory()
    pool = make_pool(factory)
    await ask_catching(pool)
    factory.made[0].broken = "malformed reply frame"
    assert await ask_catching(pool) == [True]
    assert len(factory.made) == 2 and factory.made[0].closed == 1


async def test_sc_fa_007_concurrent_failures_of_one_connection_count_once() -> None:
    """SC-FA-007: calls sharing a lease that all fail with a bad frame mark nothing."""
    factory = Factory()
    pool = make_pool(factory)
    await ask_catching(pool)
    factory.made[0].script("check_running", WireError("receive loop stopped"))
    async with pool.acquire(A1) as client:
        answers = await asyncio.gather(
            *(client.check_running(KernelId(uuid.uuid4())) for _ in range(10)),
            return_exceptions=True,
        )
    assert all(isinstance(a, WireError) for a in answers)
    assert await ask_catching(pool) == [True]
