"""AgentClientPool: cache, eviction, failure counting and shutdown (SC-WS-001..008)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import replace

import pytest

from sokovan.agent.pool import AgentClientPool
from sokovan.config import Settings
from sokovan.errors import AgentRemoteError, AgentTimeout, AgentUnavailable, UnknownAgent
from sokovan.stubs.agents import FakeAgentClient
from sokovan.types import AgentAddress, AgentId, KernelId


class Directory:
    """Every agent listed is registered at a made-up address."""

    def __init__(self, *agent_ids: str) -> None:
        self.known = set(agent_ids)
        self.resolved: list[AgentId] = []

    def add(self, agent_id: str) -> None:
        self.known.add(agent_id)

    async def resolve(self, agent_id: AgentId) -> AgentAddress:
        self.resolved.append(agent_id)
        if agent_id not in self.known:
            raise UnknownAgent(agent_id)
        return AgentAddress(agent_id, f"tcp://127.0.0.1/{agent_id}")


class BlockingClient(FakeAgentClient):
    """check_running waits until the client is closed, then fails as a closed socket does."""

    def __init__(self, agent_id: AgentId) -> None:
        super().__init__(agent_id)
        self.started = asyncio.Event()
        self._gone = asyncio.Event()

    async def check_running(self, kernel_id: KernelId) -> bool | None:
        self.started.set()
        await self._gone.wait()
        raise AgentUnavailable(f"agent {self.agent_id}: the connection was closed")

    async def close(self) -> None:
        await super().close()
        self._gone.set()


class FailingCloseClient(FakeAgentClient):
    async def close(self) -> None:
        await super().close()
        raise RuntimeError("socket already gone")


class Factory:
    """Builds fake clients per agent; `down` agents refuse to connect."""

    def __init__(self, kind: type[FakeAgentClient] = FakeAgentClient) -> None:
        self.kind = kind
        self.made: dict[AgentId, list[FakeAgentClient]] = {}
        self.down: set[str] = set()
        self.attempts = 0

    async def __call__(self, address: AgentAddress) -> FakeAgentClient:
        self.attempts += 1
        if address.agent_id in self.down:
            raise AgentUnavailable(f"agent {address.agent_id}: connection refused")
        client = self.kind(address.agent_id)
        self.made.setdefault(address.agent_id, []).append(client)
        return client

    def only(self, agent_id: str) -> FakeAgentClient:
        (client,) = self.made[AgentId(agent_id)]
        return client


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_pool(
    factory: Factory, *agents: str, size: int = 8, clock: Clock | None = None
) -> AgentClientPool:
    settings = replace(
        Settings(), agent_pool_size=size, agent_failure_threshold=3, agent_recovery=30.0
    )
    return AgentClientPool(Directory(*agents), settings, factory, clock=clock or Clock())


async def use(pool: AgentClientPool, agent_id: str) -> None:
    async with pool.acquire(AgentId(agent_id)) as client:
        await client.assign_port()


async def test_repeated_acquire_reuses_one_client() -> None:
    factory = Factory()
    pool = make_pool(factory, "a1")
    await use(pool, "a1")
    await use(pool, "a1")
    assert len(factory.made[AgentId("a1")]) == 1
    assert len(factory.only("a1").calls_to("assign_port")) == 2


async def test_sc_ws_001_idle_cached_client_closed_exactly_once() -> None:
    """SC-WS-001: one idle cached client is closed exactly once on shutdown."""
    factory = Factory()
    pool = make_pool(factory, "a1")
    await use(pool, "a1")
    await pool.close_all()
    await pool.close_all()
    assert factory.only("a1").closed == 1


async def test_sc_ws_002_cache_empty_after_shutdown() -> None:
    """SC-WS-002: after shutdown the cache holds nothing."""
    factory = Factory()
    pool = make_pool(factory, "a1", "a2")
    await use(pool, "a1")
    await use(pool, "a2")
    assert len(pool) == 2
    await pool.close_all()
    assert len(pool) == 0
    assert pool.cached_agents() == []


async def test_sc_ws_003_empty_cache_shutdown_raises_nothing() -> None:
    """SC-WS-003: shutdown with nothing cached raises nothing."""
    factory = Factory()
    pool = make_pool(factory)
    await pool.close_all()
    assert len(pool) == 0
    assert factory.attempts == 0


async def test_sc_ws_004_five_cached_clients_all_closed() -> None:
    """SC-WS-004: five cached clients are every one closed."""
    agents = [f"a{i}" for i in range(5)]
    factory = Factory()
    pool = make_pool(factory, *agents)
    for agent in agents:
        await use(pool, agent)
    await pool.close_all()
    assert [factory.only(a).closed for a in agents] == [1] * 5


async def test_sc_ws_005_failing_close_logged_others_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SC-WS-005: a failing close is logged; the others are closed; the cache is emptied."""
    factory = Factory()
    pool = make_pool(factory, "a1", "bad", "a3")
    await use(pool, "a1")
    factory.kind = FailingCloseClient
    await use(pool, "bad")
    factory.kind = FakeAgentClient
    await use(pool, "a3")
    with caplog.at_level(logging.WARNING, logger="sokovan.agent.pool"):
        await pool.close_all()
    assert factory.only("a1").closed == 1
    assert factory.only("a3").closed == 1
    assert factory.only("bad").closed == 1
    assert len(pool) == 0
    assert any(
        "bad" in r.getMessage() and "socket already gone" in r.getMessage() for r in caplog.records
    )


async def test_sc_ws_006_odd_entries_bare_client_and_none() -> None:
    """SC-WS-006: a bare client in the cache is closed, None is skipped, nothing raises."""
    factory = Factory()
    pool = make_pool(factory, "a1")
    await use(pool, "a1")
    bare = FakeAgentClient(AgentId("bare"))
    # Simulates a cache left in an odd state (an older wrapper-less entry, a cleared slot).
    pool._cache[AgentId("bare")] = bare
    pool._cache[AgentId("none")] = None
    await pool.close_all()
    assert bare.closed == 1
    assert factory.only("a1").closed == 1
    assert len(pool) == 0


async def test_sc_ws_007_in_use_client_closed_and_call_fails_clearly() -> None:
    """SC-WS-007: a client in use and cached is closed; the running call ends with an error.

    Given a task inside acquire() waiting on the agent, when the pool is shut down,
    then the client is closed and the task's call raises AgentUnavailable instead of hanging.
    """
    factory = Factory(BlockingClient)
    pool = make_pool(factory, "a1")

    async def running_task() -> bool | None:
        async with pool.acquire(AgentId("a1")) as client:
            return await client.check_running(KernelId(uuid.uuid4()))

    task = asyncio.create_task(running_task())
    client = None
    while client is None:
        await asyncio.sleep(0)
        client = factory.made.get(AgentId("a1"), [None])[0]
    assert isinstance(client, BlockingClient)
    await client.started.wait()
    await pool.close_all()
    with pytest.raises(AgentUnavailable, match="closed"):
        await asyncio.wait_for(task, timeout=10)
    assert client.closed >= 1
    assert len(pool) == 0


async def test_sc_ws_008_lru_eviction_closes_least_recently_used() -> None:
    """SC-WS-008: with a bound of 2, a third agent evicts and closes the least recently used."""
    factory = Factory()
    pool = make_pool(factory, "a1", "a2", "a3", size=2)
    await use(pool, "a1")
    await use(pool, "a2")
    await use(pool, "a1")  # a2 is now the least recently used
    await use(pool, "a3")
    assert pool.cached_agents() == ["a1", "a3"]
    assert factory.only("a2").closed == 1
    assert factory.only("a1").closed == 0


async def test_sc_ws_008_eviction_of_client_in_use_deferred_to_release() -> None:
    """SC-WS-008: an evicted client still in use is closed when released, not before."""
    factory = Factory()
    pool = make_pool(factory, "a1", "a2", size=1)
    async with pool.acquire(AgentId("a1")) as held:
        await use(pool, "a2")
        assert pool.cached_agents() == ["a2"]
        assert factory.only("a1").closed == 0
        await held.assign_port()
    assert factory.only("a1").closed == 1
    await pool.close_all()
    assert factory.only("a1").closed == 1
    assert factory.only("a2").closed == 1


async def test_agent_marked_unavailable_after_threshold_then_retried() -> None:
    """Three connection failures mark the agent; acquire fails fast until the recovery time."""
    factory = Factory()
    factory.down.add("a1")
    clock = Clock()
    pool = make_pool(factory, "a1", clock=clock)
    for _ in range(3):
        with pytest.raises(AgentUnavailable, match="refused"):
            await use(pool, "a1")
    with pytest.raises(AgentUnavailable, match="marked unavailable"):
        await use(pool, "a1")
    assert factory.attempts == 3
    factory.down.clear()
    clock.now += 31
    await use(pool, "a1")
    assert factory.attempts == 4
    assert len(factory.made[AgentId("a1")]) == 1


async def test_timeouts_during_calls_count_and_drop_the_client() -> None:
    """Call timeouts count as connection failures; marking drops and closes the cached client."""
    factory = Factory()
    clock = Clock()
    pool = make_pool(factory, "a1", clock=clock)
    for _ in range(3):
        with pytest.raises(AgentTimeout):
            async with pool.acquire(AgentId("a1")):
                raise AgentTimeout("no reply")
    assert factory.only("a1").closed == 1
    assert len(pool) == 0
    with pytest.raises(AgentUnavailable, match="marked unavailable"):
        await use(pool, "a1")


async def test_remote_errors_do_not_count_and_success_resets() -> None:
    factory = Factory()
    pool = make_pool(factory, "a1")
    for _ in range(2):
        with pytest.raises(AgentTimeout):
            async with pool.acquire(AgentId("a1")):
                raise AgentTimeout("no reply")
    await use(pool, "a1")
    for _ in range(5):
        with pytest.raises(AgentRemoteError):
            async with pool.acquire(AgentId("a1")):
                raise AgentRemoteError("KeyError", "'image'")
    with pytest.raises(AgentTimeout):
        async with pool.acquire(AgentId("a1")):
            raise AgentTimeout("no reply")
    await use(pool, "a1")
    assert factory.only("a1").closed == 0


async def test_unknown_agent_is_unavailable_without_connecting() -> None:
    factory = Factory()
    pool = make_pool(factory)
    with pytest.raises(AgentUnavailable, match="not registered"):
        await use(pool, "ghost")
    assert factory.attempts == 0
