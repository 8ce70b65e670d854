"""The composition root: builds every adapter from settings. Nothing else constructs them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Final

import redis as sync_redis
import sqlalchemy as sa
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

from sokovan import constants as C
from sokovan.activity import ValkeyActivity
from sokovan.config import Settings, presence_url_for
from sokovan.db.engine import create_engine
from sokovan.db.keypool import SqlKeypairPool
from sokovan.db.ledger import RunLedger
from sokovan.db.offload import (
    OffloadedKeypairPool,
    OffloadedLedger,
    OffloadedSecretEnviron,
    OffloadedSecrets,
    OffloadedStore,
)
from sokovan.db.repository import SchedulerRepository
from sokovan.db.secret_environ import SqlSecretEnviron
from sokovan.db.secrets import SqlSecretStore, load_or_create_key
from sokovan.db.stats import RunStats
from sokovan.ports import (
    AgentClientPool,
    AgentDirectory,
    Claims,
    FanOut,
    FanOutTracking,
    HandlerKicker,
    KeypairRefiller,
    NetworkPlugin,
    PresenceReader,
)
from sokovan.presence import ValkeyPresence
from sokovan.redis_clients import PrimaryState, async_client, primary_state, sync_client
from sokovan.redis_retry import retry_options
from sokovan.scheduler.claims import RedisClaims
from sokovan.scheduler.coordinator import Coordinator
from sokovan.scheduler.handlers import build_handlers
from sokovan.scheduler.handlers.base import HandlerContext
from sokovan.scheduler.launcher.environ import StoredKernelEnvirons
from sokovan.scheduler.launcher.keys import ClusterKeys
from sokovan.scheduler.terminator import SessionTerminator
from sokovan.scheduler.tracking import FanOutTracker, TrackedFanOut
from sokovan.status_feed import RedisStatusFeed

log = logging.getLogger(__name__)

# Redis connections one worker process opens at most; a burst beyond it waits for one.
REDIS_MAX_CONNECTIONS: Final = 64
# Redis connections a short-lived process (a CLI command, the demo, the exporter) opens at
# most: it makes one call at a time, plus a spare for a thread such as `up`'s readiness check.
PROCESS_REDIS_MAX_CONNECTIONS: Final = 4
# How long a Redis call waits for a free pooled connection before failing.
REDIS_POOL_WAIT_SEC: Final = 30.0


def build_engine(settings: Settings) -> sa.Engine:
    """The SQL engine for the configured database URL."""
    return create_engine(settings.effective_database_url)


def build_redis(settings: Settings) -> Redis:
    """An asyncio Redis client (of the current primary in Sentinel mode); binds to its loop."""
    # Many sessions started at once each touch Redis: a blocking pool makes the burst wait
    # for a connection instead of failing past redis-py's default of 100.
    return async_client(
        settings.redis_url,
        settings.sentinel,
        max_connections=REDIS_MAX_CONNECTIONS,
        wait=REDIS_POOL_WAIT_SEC,
        socket_timeout=10,
        socket_connect_timeout=5,
        **retry_options(),
    )


def build_node_redis(settings: Settings) -> sync_redis.Redis:
    """A blocking client for a worker's liveness beat, which runs in a thread of its own."""
    # Short timeouts: a beat that cannot get through is skipped and the next one tried.
    return build_sync_redis(settings, timeout=C.NODE_BEAT_SEC)


def build_presence_redis(settings: Settings) -> Redis:
    """A client of the presence store, where agents write kernel presence."""
    # A presence store of its own (SOKOVAN_PRESENCE_URL) is where the agents write: it stays
    # a plain URL; otherwise presence follows the broker's primary.
    sentinel = None if settings.presence_url else settings.sentinel
    return build_redis(
        replace(
            settings,
            redis_url=settings.effective_presence_url,
            redis_sentinels=settings.redis_sentinels if sentinel else (),
        )
    )


def build_stats_redis(settings: Settings) -> Redis:
    """A client of the kernel statistics store: Backend.AI's stat db of the presence server."""
    sentinel = None if settings.presence_url else settings.sentinel
    url = presence_url_for(settings.presence_url or settings.redis_url, C.KERNEL_STATS_DB)
    return build_redis(
        replace(
            settings,
            redis_url=url,
            redis_sentinels=settings.redis_sentinels if sentinel else (),
        )
    )


def build_sync_redis(settings: Settings, *, timeout: float) -> sync_redis.Redis:
    """A synchronous client of a short-lived process, over one small blocking pool."""
    # A command that sends thousands of tasks reuses these few connections: callers wait for
    # one instead of opening more (unbounded clients once ran the server out of them).
    return sync_client(
        settings.redis_url,
        settings.sentinel,
        max_connections=PROCESS_REDIS_MAX_CONNECTIONS,
        wait=REDIS_POOL_WAIT_SEC,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )


def build_probe_redis(settings: Settings, *, timeout: float) -> sync_redis.Redis:
    """A client that tries once and gives up after `timeout`: to ask whether the broker is up."""
    return sync_client(
        settings.redis_url,
        settings.sentinel,
        max_connections=1,
        wait=timeout,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=SyncRetry(NoBackoff(), 0),
    )


def redis_primary(settings: Settings, *, timeout: float) -> str | None:
    """host:port of the primary the Sentinels name now; None outside Sentinel mode or if none
    answers."""
    if settings.sentinel is None:
        return None
    found = primary_state(settings.sentinel, timeout)
    return found.address if found else None


def build_primary_probe(
    settings: Settings, *, timeout: float
) -> Callable[[], PrimaryState | None] | None:
    """What the metrics exporter asks the Sentinels at each scrape; None outside Sentinel mode."""
    target = settings.sentinel
    if target is None:
        return None
    return lambda: primary_state(target, timeout)


def build_secret_environ(settings: Settings, engine: sa.Engine) -> SqlSecretEnviron:
    """The encrypted store of secret variables (a client writes them before it sends)."""
    key = load_or_create_key(settings.secret_key, settings.var_dir)
    return SqlSecretEnviron(engine, key, settings.secret_env_patterns)


def build_agent_pool(settings: Settings, directory: AgentDirectory) -> AgentClientPool:
    """The agent client pool, resolving addresses from the agents table."""
    from sokovan.agent.pool import AgentClientPool as Pool

    return Pool(directory, settings)


def build_store(engine: sa.Engine) -> OffloadedStore:
    """The scheduler's tables as the domain awaits them (the repository, offloaded)."""
    return OffloadedStore(SchedulerRepository(engine))


def build_ledger(engine: sa.Engine) -> OffloadedLedger:
    """The run ledger as the domain awaits it; `.sync` for synchronous callers."""
    return OffloadedLedger(RunLedger(engine))


def build_network_plugins() -> dict[str, NetworkPlugin]:
    from sokovan.scheduler.launcher.network import load_network_plugins

    return load_network_plugins()


@dataclass
class Services:
    """Everything a worker process uses, built once per process.

    `repository` and `ledger` are the async ports; their `.sync` is the SQL store itself.
    """

    settings: Settings
    engine: sa.Engine
    repository: OffloadedStore
    ledger: OffloadedLedger
    redis: Redis
    presence: PresenceReader
    pool: AgentClientPool
    terminator: SessionTerminator
    coordinator: Coordinator
    secrets: OffloadedSecrets
    keys: ClusterKeys
    context: HandlerContext
    secret_environ: SqlSecretEnviron
    network_plugins: dict[str, NetworkPlugin] = field(default_factory=dict)
    # The presence store's own client, when built here (it may be another server than redis).
    presence_redis: Redis | None = None
    # The session status stream the repository publishes to (README, "A manager's view").
    status_feed: RedisStatusFeed | None = None
    # The kernel statistics store's client (reclaim's activity), when built here.
    stats_redis: Redis | None = None

    async def close(self) -> None:
        """Closes agent connections, Redis and the engine; each failure is logged, not raised."""
        closers = [("agent pool", self.pool.close_all), ("redis", self.redis.aclose)]
        if self.presence_redis is not None:
            closers.append(("presence store", self.presence_redis.aclose))
        if self.stats_redis is not None:
            closers.append(("kernel statistics store", self.stats_redis.aclose))
        for name, closer in closers:
            try:
                await closer()
            except Exception as e:
                log.warning("closing %s failed: %s", name, e)
        if self.status_feed is not None:
            self.status_feed.close()
        self.engine.dispose()


async def build_services(
    settings: Settings,
    fanout: FanOut,
    kicker: HandlerKicker,
    *,
    pool: AgentClientPool | None = None,
    engine: sa.Engine | None = None,
    redis: Redis | None = None,
    presence: PresenceReader | None = None,
    claims: Claims | None = None,
    tracker: FanOutTracking | None = None,
    network_plugins: dict[str, NetworkPlugin] | None = None,
    refiller: KeypairRefiller | None = None,
    holder: str | None = None,
) -> Services:
    """Builds the services inside the event loop that will use them; any adapter may be given.

    `holder` is the worker incarnation this process belongs to (sokovan.scheduler.leases)."""
    engine = engine or build_engine(settings)
    repository = build_store(engine)
    status_feed = RedisStatusFeed(settings.redis_url)
    repository.sync.feed = status_feed
    ledger = build_ledger(engine)
    redis = redis or build_redis(settings)
    presence_redis = None if presence is not None else build_presence_redis(settings)
    presence = presence or ValkeyPresence(
        presence_redis or redis,
        stale_after=settings.presence_stale_after,
        ttl=settings.presence_ttl,
        manager_writes=settings.presence_manager_writes,
        check_refresh=settings.presence_check_refresh,
    )
    pool = pool or build_agent_pool(settings, repository)
    tracker = tracker or FanOutTracker(redis)
    coordinator = Coordinator(
        ledger=ledger,
        claims=claims or RedisClaims(redis, holder=holder),
        kicker=kicker,
        tracker=tracker,
        claim_lifetime=settings.claim_lifetime,
        run_deadline=settings.run_deadline,
        budgets=settings.budgets,
        record_empty_beat_runs=settings.record_empty_beat_runs,
    )
    tracked = TrackedFanOut(fanout, tracker, ledger, settle=coordinator.settle)
    terminator = SessionTerminator(
        pool,
        presence,
        tracked,
        destroy_concurrency=settings.destroy_concurrency,
        check_running_concurrency=settings.check_running_concurrency,
        verify_identity=True,
    )
    key = load_or_create_key(settings.secret_key, settings.var_dir)
    secrets = OffloadedSecrets(SqlSecretStore(engine, key))
    secret_environ = SqlSecretEnviron(engine, key, settings.secret_env_patterns)
    keys = ClusterKeys(
        OffloadedKeypairPool(SqlKeypairPool(engine, key)),
        key_type=settings.keypair_type,
        target=settings.keypair_pool_size,
        refiller=refiller,
        redis=redis,
    )
    plugins = build_network_plugins() if network_plugins is None else network_plugins
    stats_redis = build_stats_redis(settings)
    context = HandlerContext(
        settings=settings,
        repository=repository,
        terminator=terminator,
        pool=pool,
        secrets=secrets,
        fanout=tracked,
        network_plugins=plugins,
        environs=StoredKernelEnvirons(
            repository.sessions_by_ids, OffloadedSecretEnviron(secret_environ)
        ),
        keys=keys,
        activity=ValkeyActivity(stats_redis),
    )
    for runtime in build_handlers(context):
        coordinator.register(runtime)
    return Services(
        settings=settings,
        engine=engine,
        repository=repository,
        ledger=ledger,
        redis=redis,
        presence=presence,
        pool=pool,
        terminator=terminator,
        coordinator=coordinator,
        secrets=secrets,
        keys=keys,
        context=context,
        secret_environ=secret_environ,
        network_plugins=plugins,
        presence_redis=presence_redis,
        status_feed=status_feed,
        stats_redis=stats_redis,
    )


class Adapters:
    """What a short-lived process uses (a CLI command, the demo, the metrics exporter).

    Each adapter is built on first use, once per process; close() releases those built.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def engine(self) -> sa.Engine:
        return build_engine(self.settings)

    @cached_property
    def repository(self) -> SchedulerRepository:
        return SchedulerRepository(self.engine)

    @cached_property
    def ledger(self) -> RunLedger:
        return RunLedger(self.engine)

    @cached_property
    def store(self) -> OffloadedStore:
        """The repository as the domain awaits it (its calls offloaded to a thread)."""
        return OffloadedStore(self.repository)

    @cached_property
    def stats(self) -> RunStats:
        return RunStats(self.engine)

    @cached_property
    def secret_environ(self) -> SqlSecretEnviron:
        return build_secret_environ(self.settings, self.engine)

    @cached_property
    def redis(self) -> sync_redis.Redis:
        return build_sync_redis(self.settings, timeout=C.PROCESS_REDIS_TIMEOUT_SEC)

    def close(self) -> None:
        """Disconnects Redis and disposes of the engine, if they were built."""
        if "redis" in self.__dict__:
            self.redis.close()
        if "engine" in self.__dict__:
            self.engine.dispose()
