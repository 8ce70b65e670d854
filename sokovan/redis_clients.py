"""Redis clients of one server (a URL) or of the current primary behind Sentinels.

In Sentinel mode a client asks the Sentinels for the primary on every new connection: a
connection that breaks in a failover is retried (redis_retry's policy) and reconnects to the
promoted replica. The URL still gives the password and database number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis as sync_redis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.sentinel import Sentinel as SyncSentinel
from redis.sentinel import SentinelConnectionPool as SyncSentinelConnectionPool

from sokovan.config import SentinelTarget


class PrimaryConnection(SentinelManagedConnection):
    """A connection that asks the Sentinels for the primary each time it (re)connects."""

    # redis-py's asyncio client reconnects through connect_check_health, which skips the
    # Sentinel lookup of SentinelManagedConnection.connect: retries would keep dialling the
    # dead primary until they ran out (redis/redis-py#3874). Resolving here makes each retry
    # find the promoted one.
    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self.is_connected:
            return
        if self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(
            check_health=check_health, retry_socket_connect=retry_socket_connect
        )


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel-backed pool whose callers wait for a free connection instead of failing."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # the client closes: so do its connections to the Sentinels
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.aclose()


class SyncBlockingSentinelPool(SyncSentinelConnectionPool, sync_redis.BlockingConnectionPool):
    """The synchronous BlockingSentinelPool."""

    def disconnect(self, inuse_connections: bool = True) -> None:
        super().disconnect(inuse_connections)
        if inuse_connections:
            for sentinel in self.sentinel_manager.sentinels:
                sentinel.close()


def url_auth(url: str) -> dict[str, Any]:
    """The username, password and database number a redis:// URL names."""
    parts = urlsplit(url)
    path = parts.path.strip("/")
    return {
        "db": int(path) if path.isdigit() else 0,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }


def _sentinel_kwargs(target: SentinelTarget, timeout: float) -> dict[str, Any]:
    return {
        "password": target.password,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }


def async_client(
    url: str, sentinel: SentinelTarget | None, *, max_connections: int, wait: float, **kw: Any
) -> Redis:
    """An asyncio client over a blocking pool: of `url`, or of the Sentinels' primary."""
    if sentinel is None:
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=wait, **kw
        )
        return Redis.from_pool(pool)
    timeout = float(kw.get("socket_connect_timeout") or 5)
    manager = Sentinel(sentinel.addresses, sentinel_kwargs=_sentinel_kwargs(sentinel, timeout))
    client: Redis = manager.master_for(
        sentinel.master,
        redis_class=Redis,
        connection_pool_class=BlockingSentinelPool,
        connection_class=PrimaryConnection,
        max_connections=max_connections,
        timeout=wait,
        **url_auth(url),
        **kw,
    )
    return client


def sync_client(
    url: str, sentinel: SentinelTarget | None, *, max_connections: int, wait: float, **kw: Any
) -> sync_redis.Redis:
    """A synchronous client over a blocking pool: of `url`, or of the Sentinels' primary."""
    if sentinel is None:
        pool = sync_redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=wait, **kw
        )
        return sync_redis.Redis.from_pool(pool)
    timeout = float(kw.get("socket_connect_timeout") or 5)
    manager = SyncSentinel(sentinel.addresses, sentinel_kwargs=_sentinel_kwargs(sentinel, timeout))
    client: sync_redis.Redis = manager.master_for(
        sentinel.master,
        redis_class=sync_redis.Redis,
        connection_pool_class=SyncBlockingSentinelPool,
        max_connections=max_connections,
        timeout=wait,
        **url_auth(url),
        **kw,
    )
    return client


@dataclass(frozen=True)
class PrimaryState:
    """The primary as the Sentinels see it, and their configuration epoch for it."""

    address: str
    # Grows by one with every failover of this master (by more if the same Sentinels also
    # fail over other masters: the epoch is theirs, shared).
    config_epoch: int


def _seen_up(state: Any) -> bool:
    """Whether a Sentinel's view is of a primary it sees up (as redis-py's discovery judges)."""
    if not isinstance(state, dict) or not state.get("is_master"):
        return False
    return not (state.get("is_sdown") or state.get("is_odown"))


def primary_state(sentinel: SentinelTarget, timeout: float) -> PrimaryState | None:
    """What the first Sentinel that answers says of the primary; None if none does."""
    manager = SyncSentinel(sentinel.addresses, sentinel_kwargs=_sentinel_kwargs(sentinel, timeout))
    try:
        for client in manager.sentinels:
            try:
                state: Any = client.sentinel_master(sentinel.master)
            except (sync_redis.RedisError, OSError):
                continue
            if _seen_up(state):
                address = f"{state['ip']}:{state['port']}"
                return PrimaryState(address, int(state.get("config-epoch", 0)))
        return None
    finally:
        for client in manager.sentinels:
            client.close()
