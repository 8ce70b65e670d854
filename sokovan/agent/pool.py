"""A bounded LRU cache of connected agent clients, with failure counting per agent."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from sokovan.agent.client import DEFAULT_CONNECT_TIMEOUT, CallosumAgentClient
from sokovan.agent.curve import CurveKeys, agent_key_path, load_manager_cert, load_public_key
from sokovan.config import Settings
from sokovan.errors import (
    AgentError,
    AgentRemoteError,
    AgentTimeout,
    AgentUnavailable,
    ConfigError,
    UnknownAgent,
    WireError,
)
from sokovan.ports import AgentClient, AgentDirectory
from sokovan.types import AgentAddress, AgentId

log = logging.getLogger(__name__)


class ClosableAgentClient(AgentClient, Protocol):
    """An agent client the pool can close."""

    async def close(self) -> None: ...


@runtime_checkable
class ObservedClient(Protocol):
    """A client that reports each call's outcome (None: success) to its observer."""

    observer: Callable[[AgentError | None], None] | None


ClientFactory = Callable[[AgentAddress], Awaitable[ClosableAgentClient]]
# Failures that say the agent cannot be reached; a remote exception says it can.
CONNECTION_FAILURES = (AgentUnavailable, AgentTimeout, WireError, OSError)


@dataclass(eq=False)
class _Entry:
    agent_id: AgentId
    client: ClosableAgentClient
    in_use: int = 0
    retired: bool = False  # left the cache while in use: close on the last release
    closed: bool = False
    # Failures the client already reported, so acquire does not count them a second time.
    counted: weakref.WeakSet[BaseException] = field(default_factory=weakref.WeakSet)


@dataclass
class _Health:
    failures: int = 0
    unavailable_until: float = 0.0


def curve_keys_for(settings: Settings, address: AgentAddress) -> CurveKeys | None:
    """The CURVE keys for one agent, or None when CURVE is off."""
    if settings.curve_manager_cert is None:
        if address.public_key:
            raise ConfigError(
                f"agent {address.agent_id} requires CURVE but SOKOVAN_CURVE_MANAGER_CERT is unset"
            )
        return None
    public, secret = load_manager_cert(settings.curve_manager_cert)
    agent_public = address.public_key
    if agent_public is None and settings.curve_agent_public_key is not None:
        agent_public = load_public_key(
            agent_key_path(settings.curve_agent_public_key, address.agent_id)
        )
    if agent_public is None:
        raise ConfigError(
            f"no CURVE public key for agent {address.agent_id}: "
            "register it or set SOKOVAN_CURVE_AGENT_PUBLIC_KEY"
        )
    return CurveKeys(public, secret, agent_public)


def callosum_client_factory(settings: Settings) -> ClientFactory:
    """Connects CallosumAgentClients with the timeouts and CURVE keys of `settings`."""

    async def connect(address: AgentAddress) -> ClosableAgentClient:
        client = CallosumAgentClient(
            address.agent_id,
            address.rpc_addr,
            call_timeout=settings.agent_call_timeout,
            connect_timeout=min(DEFAULT_CONNECT_TIMEOUT, settings.agent_call_timeout),
            curve=curve_keys_for(settings, address),
        )
        await client.connect()
        return client

    return connect


class AgentClientPool:
    """Lends one cached client per agent; marks an agent unavailable after repeated failures."""

    def __init__(
        self,
        directory: AgentDirectory,
        settings: Settings,
        client_factory: ClientFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._directory = directory
        self._size = max(1, settings.agent_pool_size)
        self._threshold = max(1, settings.agent_failure_threshold)
        self._recovery = settings.agent_recovery
        self._factory = client_factory or callosum_client_factory(settings)
        self._clock = clock
        # Values are _Entry; close_all also copes with anything else found here.
        self._cache: OrderedDict[AgentId, Any] = OrderedDict()
        self._retired: set[_Entry] = set()
        self._health: dict[AgentId, _Health] = {}
        self._locks: dict[AgentId, asyncio.Lock] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def cached_agents(self) -> list[AgentId]:
        """Agent ids in the cache, least recently used first."""
        return list(self._cache)

    @asynccontextmanager
    async def acquire(self, agent_id: AgentId) -> AsyncIterator[ClosableAgentClient]:
        """Lends the agent's client; raises AgentUnavailable when it cannot be reached.

        Connection failures (no connection, timeouts, bad frames) count toward the agent's
        failure threshold, also those of calls whose error the borrower catches; an
        agent's own exception (AgentRemoteError) does not.
        """
        self._check_available(agent_id)
        entry = await self._checkout(agent_id)
        try:
            yield entry.client
        except CONNECTION_FAILURES as e:
            if e not in entry.counted:
                self._connection_failed(entry, e)
            raise
        except AgentRemoteError:
            self._health.pop(agent_id, None)
            raise
        else:
            # An observed client has had each call counted; a clean exit says nothing more.
            if not isinstance(entry.client, ObservedClient):
                self._health.pop(agent_id, None)
        finally:
            entry.in_use -= 1
            if entry.retired and entry.in_use == 0:
                self._retired.discard(entry)
                await self._close_entry(entry)

    async def close_all(self) -> None:
        """Closes every cached client, idle or in use, and empties the cache."""
        entries = [*self._cache.values(), *self._retired]
        self._cache.clear()
        self._retired.clear()
        for entry in entries:
            if entry is None:
                continue
            if isinstance(entry, _Entry):
                await self._close_entry(entry)
            else:
                await _close_client(entry, getattr(entry, "agent_id", "?"))
        log.info("closed %d cached agent clients", len(entries))

    def _check_available(self, agent_id: AgentId) -> None:
        health = self._health.get(agent_id)
        if health is None:
            return
        wait = health.unavailable_until - self._clock()
        if wait > 0:
            raise AgentUnavailable(
                f"agent {agent_id} is marked unavailable after {health.failures} consecutive "
                f"connection failures; next try in {wait:.1f}s"
            )

    async def _checkout(self, agent_id: AgentId) -> _Entry:
        lock = self._locks.setdefault(agent_id, asyncio.Lock())
        async with lock:
            entry = self._cache.get(agent_id)
            if isinstance(entry, _Entry) and not entry.closed:
                broken = getattr(entry.client, "broken", None)
                if broken is None:
                    self._cache.move_to_end(agent_id)
                    entry.in_use += 1
                    return entry
                log.info("agent %s: dropping a broken connection: %s", agent_id, broken)
                del self._cache[agent_id]
                await self._retire(entry)
            entry = _Entry(agent_id, await self._connect(agent_id), in_use=1)
            if isinstance(entry.client, ObservedClient):
                entry.client.observer = functools.partial(self._observe, entry)
            self._cache[agent_id] = entry
            await self._evict_over_bound()
            return entry

    def _observe(self, entry: _Entry, error: AgentError | None) -> None:
        """Counts the outcome of one call made on `entry`'s client."""
        if error is None or isinstance(error, AgentRemoteError):
            self._health.pop(entry.agent_id, None)  # the agent answered
        elif isinstance(error, CONNECTION_FAILURES):
            entry.counted.add(error)
            self._connection_failed(entry, error)

    def _connection_failed(self, entry: _Entry, error: BaseException) -> None:
        """Counts a failure unless its connection was dropped already; drops a broken one."""
        if entry.retired or entry.closed:
            return  # dropped already: the calls that shared it fail with it, counted once
        marked = self._record_failure(entry.agent_id)
        # A bad frame leaves nothing to reuse; after marking, a fresh connection is made
        # once the recovery period is over, not this one reused.
        if marked or isinstance(error, WireError):
            self._drop(entry)

    def _drop(self, entry: _Entry) -> None:
        """Takes an entry out of the cache; closed on its last release (or by close_all)."""
        if self._cache.get(entry.agent_id) is entry:
            del self._cache[entry.agent_id]
        entry.retired = True
        self._retired.add(entry)

    async def _connect(self, agent_id: AgentId) -> ClosableAgentClient:
        try:
            address = await self._directory.resolve(agent_id)
        except UnknownAgent as e:
            raise AgentUnavailable(f"agent {agent_id} is not registered: {e}") from e
        try:
            return await self._factory(address)
        except CONNECTION_FAILURES as e:
            self._record_failure(agent_id)
            if isinstance(e, AgentUnavailable):
                raise
            raise AgentUnavailable(f"agent {agent_id} at {address.rpc_addr}: {e}") from e

    async def _evict_over_bound(self) -> None:
        while len(self._cache) > self._size:
            agent_id, entry = self._cache.popitem(last=False)
            log.info("agent client cache full: evicting agent %s", agent_id)
            await self._retire(entry)

    async def _retire(self, entry: Any) -> None:
        """Closes an entry that left the cache now, or on its last release if in use."""
        if isinstance(entry, _Entry) and entry.in_use > 0:
            entry.retired = True
            self._retired.add(entry)
        elif isinstance(entry, _Entry):
            await self._close_entry(entry)
        elif entry is not None:
            await _close_client(entry, getattr(entry, "agent_id", "?"))

    def _record_failure(self, agent_id: AgentId) -> bool:
        """Counts a failure; True when it marks the agent unavailable."""
        health = self._health.setdefault(agent_id, _Health())
        health.failures += 1
        if health.failures < self._threshold:
            return False
        health.unavailable_until = self._clock() + self._recovery
        log.warning(
            "agent %s marked unavailable for %.1fs after %d consecutive connection failures",
            agent_id,
            self._recovery,
            health.failures,
        )
        return True

    async def _close_entry(self, entry: _Entry) -> None:
        if entry.closed:
            return
        entry.closed = True
        await _close_client(entry.client, entry.agent_id)


async def _close_client(client: Any, agent_id: str) -> None:
    try:
        await client.close()
    except Exception as e:  # one bad close must not keep the others open
        log.warning("closing the client of agent %s failed: %s", agent_id, e)
