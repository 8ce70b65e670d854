"""Many reference agents on one event loop, with batched presence, registry and control."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from callosum.rpc import Peer
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from sokovan import constants as C
from sokovan.agentd.agent import AgentSpec, ReferenceAgent
from sokovan.agentd.control import ack_key, control_key, decode_op
from sokovan.agentd.runtime import make_runtime
from sokovan.agentd.server import CurveServerAuth, load_curve_auth, open_peer
from sokovan.agentd.stats import KernelStatsWriter
from sokovan.config import SentinelTarget, presence_url_for
from sokovan.errors import SokovanError
from sokovan.presence import ValkeyPresence
from sokovan.redis_clients import async_client
from sokovan.redis_retry import retry_options

log = logging.getLogger(__name__)

# A reference agent rewrites its registry entry this often; readers judge liveness by it.
AGENT_HEARTBEAT_SEC: Final = 5.0
# How long the acknowledgement of an applied fault operation is kept.
AGENT_CONTROL_ACK_TTL_SEC: Final = 300
# A reference agent's first Redis contact: retries with exponential backoff up to this cap, so
# an agent started beside its Valkey waits for it instead of exiting.
AGENT_REDIS_RETRIES: Final = 12
AGENT_REDIS_BACKOFF_CAP_SEC: Final = 2.0

# Redis connections shared by the agents of one process.
_REDIS_CONNECTIONS = 64
# Presence hashes written per pipeline: bounded so one huge agent set does not stall Redis.
_PRESENCE_CHUNK = 2000


@dataclass(frozen=True)
class HostOptions:
    """Everything an agent host needs besides the agents themselves."""

    redis_url: str
    # Where presence is written; empty: redis_url's server, Backend.AI's live db.
    presence_url: str = ""
    presence_interval: float = C.PRESENCE_REFRESH_SEC
    presence_ttl: int = C.PRESENCE_TTL_SEC
    heartbeat_interval: float = AGENT_HEARTBEAT_SEC
    control_interval: float = C.AGENT_CONTROL_POLL_SEC
    curve_secret_key_file: Path | None = None
    curve_client_key_files: tuple[Path, ...] = ()
    # Sentinel mode (SOKOVAN_REDIS_SENTINELS): registration follows the current primary, and
    # so does presence unless it has a store of its own (presence_sentinel None).
    sentinel: SentinelTarget | None = None
    presence_sentinel: SentinelTarget | None = None
    # Where process kernels' statistics go (Backend.AI's stat db); empty: not written.
    stats_url: str = ""
    stats_interval: float = C.KERNEL_STATS_INTERVAL_SEC


class AgentHost:
    """Runs reference agents: their RPC sockets, presence, registration and fault queue."""

    def __init__(self, specs: Sequence[AgentSpec], options: HostOptions) -> None:
        self.specs = list(specs)
        self.options = options
        self.agents: list[ReferenceAgent] = []
        self._peers: list[Peer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._redis: Redis | None = None
        self._presence: ValkeyPresence | None = None
        self._stats: KernelStatsWriter | None = None

    async def start(self) -> None:
        """Binds every agent's socket, registers them and starts the periodic loops."""
        # Every agent of this process shares one pool; a blocking pool makes a burst of calls
        # (more than redis-py's default of 100 connections) wait for a connection, not fail.
        redis = async_client(
            self.options.redis_url,
            self.options.sentinel,
            max_connections=_REDIS_CONNECTIONS,
            wait=30,
            **retry_options(),
        )
        self._redis = redis
        await _first_contact(redis)
        presence = ValkeyPresence(_presence_client(self.options), ttl=self.options.presence_ttl)
        self._presence = presence
        started_at = await _start_time(presence)
        self.agents = [
            ReferenceAgent(spec, make_runtime(spec.runtime), presence, started_at)
            for spec in self.specs
        ]
        # Presence first, before serving or registering: once the manager learns of this
        # instance, every kernel it runs carries a presence stamp newer than its start.
        try:
            await self._refresh_presence()
        except (RedisError, OSError) as e:
            log.warning("first presence write failed, retrying with the refresh loop: %s", e)
        for agent in self.agents:
            self._peers.append(await open_peer(agent, self._curve_auth(agent.agent_id)))
        await self._heartbeat()
        opts = self.options
        self._tasks = [
            asyncio.create_task(self._every(opts.presence_interval, self._refresh_presence)),
            asyncio.create_task(self._every(opts.heartbeat_interval, self._heartbeat)),
            asyncio.create_task(self._every(opts.control_interval, self._take_control_ops)),
        ]
        if opts.stats_url:
            self._stats = KernelStatsWriter(_stats_client(opts))
            self._tasks.append(
                asyncio.create_task(self._every(opts.stats_interval, self._write_stats))
            )
        log.info(
            "%d reference agent(s) serving: %s",
            len(self.agents),
            ", ".join(f"{a.agent_id}={a.rpc_addr}" for a in self.agents),
        )

    async def close(self) -> None:
        """Stops serving, kills kernels, drops presence and unregisters."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for peer in self._peers:
            try:
                await peer.__aexit__(None, None, None)
            except Exception:
                log.exception("closing an RPC socket failed")
        for agent in self.agents:
            try:
                await agent.close()
            except (RedisError, OSError) as e:
                log.warning("agent %s: dropping presence at shutdown failed: %s", agent.agent_id, e)
        if self._redis is not None:
            try:
                if self.agents:
                    await self._redis.hdel(C.AGENT_REGISTRY_KEY, *(a.agent_id for a in self.agents))
            except (RedisError, OSError) as e:
                log.warning("unregistering agents failed: %s", e)
            await self._redis.aclose()
        if self._presence is not None:
            await self._presence.aclose()
        if self._stats is not None:
            await self._stats.aclose()
        log.info("%d reference agent(s) stopped", len(self.agents))

    def _curve_auth(self, agent_id: str) -> CurveServerAuth | None:
        """CURVE for one agent: one certificate for all, or `<folder>/<id>.key_secret` each."""
        secret = self.options.curve_secret_key_file
        if secret is None:
            return None
        if secret.is_dir():
            secret = secret / f"{agent_id}.key_secret"
        return load_curve_auth(secret, self.options.curve_client_key_files)

    @property
    def redis(self) -> Redis:
        assert self._redis is not None, "start() first"
        return self._redis

    async def _every(self, interval: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await step()
            except (RedisError, OSError) as e:
                log.warning("%s failed, retrying in %.1fs: %s", step.__name__, interval, e)

    async def _refresh_presence(self) -> None:
        due = [kid for agent in self.agents for kid in agent.presence_due()]
        if not due:
            return
        presence = self._presence
        assert presence is not None, "start() first"
        now = await presence.server_time()
        for start in range(0, len(due), _PRESENCE_CHUNK):
            await presence.write_presence(due[start : start + _PRESENCE_CHUNK], now=now)

    async def _write_stats(self) -> None:
        assert self._stats is not None, "start() first"
        pids = {kid: pid for agent in self.agents for kid, pid in agent.kernel_pids().items()}
        await self._stats.write(pids)

    async def _heartbeat(self) -> None:
        entries: dict[Any, Any] = {
            a.agent_id: json.dumps(a.registration()) for a in self.agents if not a.faults.silent
        }
        if entries:
            await self.redis.hset(C.AGENT_REGISTRY_KEY, mapping=entries)

    async def _take_control_ops(self) -> None:
        # One cheap EXISTS over every queue; the read-and-delete only runs when one is waiting.
        if not await self.redis.exists(*(control_key(a.agent_id) for a in self.agents)):
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for agent in self.agents:
                pipe.lrange(control_key(agent.agent_id), 0, -1)
                pipe.delete(control_key(agent.agent_id))
            replies: list[Any] = await pipe.execute()
        acks: dict[str, str] = {}
        for agent, queued in zip(self.agents, replies[::2], strict=True):
            for raw in queued:
                token, error = _apply_queued(agent, raw)
                if token:
                    acks[ack_key(agent.agent_id, token)] = json.dumps({"error": error})
        if acks:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, value in acks.items():
                    pipe.set(key, value, ex=AGENT_CONTROL_ACK_TTL_SEC)
                await pipe.execute()


def _stats_client(options: HostOptions) -> Redis:
    return async_client(
        options.stats_url,
        options.presence_sentinel,
        max_connections=_REDIS_CONNECTIONS,
        wait=30,
        **retry_options(),
    )


async def _start_time(presence: ValkeyPresence) -> float:
    """Now on the presence store's clock, which stamps presence; this host's clock if unread."""
    try:
        return await presence.server_time()
    except (RedisError, OSError) as e:
        log.warning("presence store unread at start, its start time from this host: %s", e)
        return time.time()


def _presence_client(options: HostOptions) -> Redis:
    url = options.presence_url or presence_url_for(options.redis_url, C.PRESENCE_DB)
    # Retried as the registry's client is: a destroy that drops presence while the primary
    # fails over waits for the promoted one instead of failing the kernel's destroy.
    return async_client(
        url,
        options.presence_sentinel,
        max_connections=_REDIS_CONNECTIONS,
        wait=30,
        **retry_options(),
    )


def _apply_queued(agent: ReferenceAgent, raw: bytes) -> tuple[str, str]:
    """Applies one queued operation; returns its token and an error message or ""."""
    try:
        op = decode_op(raw)
    except SokovanError as e:
        log.warning("agent %s: queued fault operation skipped: %s", agent.agent_id, e)
        return "", str(e)
    token = str(op.pop("token", ""))
    try:
        agent.faults.apply(op)
    except SokovanError as e:
        log.warning("agent %s: fault operation %s refused: %s", agent.agent_id, op, e)
        return token, str(e)
    log.warning("agent %s: fault operation %s applied", agent.agent_id, op)
    return token, ""


async def _first_contact(redis: Redis) -> None:
    """Waits for Redis to answer, backing off; raises once the retries are spent."""
    # Started beside its Valkey, an agent may come up first: back off and retry instead of
    # exiting, so a supervisor that stops everything on one exit is not brought down. Only
    # the first contact waits: later outages are logged and retried by the periodic loops.
    retry = Retry(
        ExponentialBackoff(cap=AGENT_REDIS_BACKOFF_CAP_SEC, base=0.1), AGENT_REDIS_RETRIES
    )

    async def failed(error: Exception) -> None:
        log.warning("Redis not answering yet, retrying: %s", error)

    await retry.call_with_retry(redis.ping, failed)


async def serve(specs: Sequence[AgentSpec], options: HostOptions) -> None:
    """Runs the agents until SIGTERM or SIGINT, then shuts them down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host = AgentHost(specs, options)
    try:
        await host.start()
        await stop.wait()
        log.info("stop signal received")
    finally:
        await host.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
