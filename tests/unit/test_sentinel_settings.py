"""SC-HA-003: Sentinel mode is chosen by settings alone; every client follows the primary."""

from __future__ import annotations

import pytest
import redis as sync_redis

from sokovan import constants as C
from sokovan.bootstrap import (
    build_presence_redis,
    build_probe_redis,
    build_redis,
    build_sync_redis,
)
from sokovan.config import SentinelTarget, load_settings
from sokovan.errors import ConfigError
from sokovan.redis_clients import BlockingSentinelPool, PrimaryConnection, SyncBlockingSentinelPool
from tasks.app import celery_config

SENTINELS = {
    "SOKOVAN_REDIS_SENTINELS": "10.0.0.1:26379, 10.0.0.2:26380,10.0.0.3:26381",
    "SOKOVAN_REDIS_SENTINEL_MASTER": "prod",
    "SOKOVAN_REDIS_SENTINEL_PASSWORD": "s3ntinel",
    "SOKOVAN_REDIS_URL": "redis://:hunter2@ignored:6379/4",
}


def test_sentinel_settings_name_the_sentinels_and_turn_the_embedded_server_off() -> None:
    """SC-HA-003: three variables name the Sentinels, the master and their password."""
    s = load_settings(SENTINELS, dotenv=None)
    assert s.sentinel == SentinelTarget(
        (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26381)), "prod", "s3ntinel"
    )
    assert not s.uses_embedded_valkey
    assert load_settings({}, dotenv=None).sentinel is None


def test_a_malformed_sentinel_address_is_refused_with_its_setting() -> None:
    s = load_settings({"SOKOVAN_REDIS_SENTINELS": "10.0.0.1"}, dotenv=None)
    with pytest.raises(ConfigError, match="SOKOVAN_REDIS_SENTINELS"):
        _ = s.sentinel


def test_celery_broker_and_results_use_sentinel_urls_with_the_master_name() -> None:
    """SC-HA-003: Celery's sentinel:// URLs, one per Sentinel, with the URL's password and db,
    and the master's name in both transport options."""
    conf = celery_config(load_settings(SENTINELS, dotenv=None))
    expected = ";".join(
        f"sentinel://:hunter2@{h}/4" for h in ("10.0.0.1:26379", "10.0.0.2:26380", "10.0.0.3:26381")
    )
    assert conf["broker_url"] == conf["result_backend"] == expected
    for key in ("broker_transport_options", "result_backend_transport_options"):
        assert conf[key]["master_name"] == "prod"
        assert conf[key]["sentinel_kwargs"] == {"password": "s3ntinel"}
        assert conf[key]["visibility_timeout"] == C.BROKER_VISIBILITY_TIMEOUT_SEC
    plain = celery_config(load_settings({}, dotenv=None))
    assert plain["broker_url"].startswith("redis://")
    assert "master_name" not in plain["broker_transport_options"]


async def test_domain_clients_ask_the_sentinels_for_the_primary() -> None:
    """SC-HA-003: claims, leases, run tracking and dead letters (build_redis), presence when
    it is ours, and the processes' sync and probe clients all connect through the Sentinels,
    with the retry policy of the plain clients."""
    s = load_settings(SENTINELS, dotenv=None)
    client = build_redis(s)
    presence = build_presence_redis(s)
    try:
        for c, db in ((client, 4), (presence, C.PRESENCE_DB)):
            pool = c.connection_pool
            assert isinstance(pool, BlockingSentinelPool)
            assert pool.service_name == "prod"
            assert pool.connection_class is PrimaryConnection
            assert pool.connection_kwargs["db"] == db
            assert pool.connection_kwargs["password"] == "hunter2"
            assert pool.connection_kwargs["retry"] is not None
            hosts = [
                (
                    x.connection_pool.connection_kwargs["host"],
                    x.connection_pool.connection_kwargs["port"],
                )
                for x in pool.sentinel_manager.sentinels
            ]
            assert hosts == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26381)]
    finally:
        await client.aclose()
        await presence.aclose()
    for sync in (build_sync_redis(s, timeout=1.0), build_probe_redis(s, timeout=1.0)):
        assert isinstance(sync.connection_pool, SyncBlockingSentinelPool)
        assert sync.connection_pool.service_name == "prod"
        sync.close()


async def test_presence_of_its_own_store_stays_where_the_agents_write_it() -> None:
    """SC-HA-003: SOKOVAN_PRESENCE_URL is a plain server even in Sentinel mode."""
    s = load_settings({**SENTINELS, "SOKOVAN_PRESENCE_URL": "redis://presence:6379/0"}, dotenv=None)
    presence = build_presence_redis(s)
    try:
        pool = presence.connection_pool
        assert not isinstance(pool, BlockingSentinelPool)
        assert pool.connection_kwargs["host"] == "presence"
        assert pool.connection_kwargs["db"] == C.PRESENCE_DB
    finally:
        await presence.aclose()
    plain = build_sync_redis(load_settings({}, dotenv=None), timeout=1.0)
    assert type(plain.connection_pool) is sync_redis.BlockingConnectionPool
    plain.close()
