"""Where presence lives, and what the manager writes while reading it."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from sokovan import constants as C
from sokovan.config import Settings, load_settings, presence_url_for
from sokovan.presence import ValkeyPresence, agent_last_check_key, presence_key
from sokovan.types import AgentId, KernelId


def test_presence_store_defaults_to_the_brokers_server_db_2() -> None:
    """Backend.AI's live database: the broker's host and port, db 2."""
    settings = Settings(redis_url="redis://10.0.0.7:6379/0")
    assert settings.effective_presence_url == "redis://10.0.0.7:6379/2"
    assert Settings().presence_refresh == 60
    assert (Settings().presence_ttl, Settings().presence_stale_after) == (300, 120)


def test_presence_store_url_and_db_are_settings() -> None:
    """SOKOVAN_PRESENCE_URL names another server; SOKOVAN_PRESENCE_DB picks its database."""
    settings = load_settings(
        {"SOKOVAN_PRESENCE_URL": "redis://:pw@valkey-live:6380", "SOKOVAN_PRESENCE_DB": "5"},
        dotenv=None,
    )
    assert settings.effective_presence_url == "redis://:pw@valkey-live:6380/5"
    assert presence_url_for("unix:///run/valkey.sock?db=0", 2) == "unix:///run/valkey.sock?db=2"


@pytest.mark.integration
async def test_manager_writes_stamp_existing_hashes_and_agents(redis: Redis) -> None:
    """With manager writes, a read stamps last_check on existing hashes and agents' keys only.

    A kernel without presence gets no hash (a real agent would ignore one without `presence`),
    and an agent of no kernel in the batch gets no key.
    """
    present, absent = KernelId(uuid.uuid4()), KernelId(uuid.uuid4())
    writer = ValkeyPresence(redis)
    seconds, _ = await redis.time()
    await writer.write_presence([present], now=float(seconds) - 30)
    reader = ValkeyPresence(redis, manager_writes=True)

    await reader.check_kernel_presence_status_batch(
        [present, absent], [AgentId("a1"), AgentId("a1")]
    )

    stamp = await redis.get(agent_last_check_key("a1"))
    assert stamp is not None and int(stamp) >= int(seconds)
    assert await redis.hget(presence_key(present), "last_check") == stamp
    assert not await redis.exists(presence_key(absent))
    assert 0 < await redis.ttl(agent_last_check_key("a1")) <= C.AGENT_LAST_CHECK_TTL_SEC
    assert reader.round_trips == 1


@pytest.mark.integration
async def test_without_manager_writes_a_read_writes_nothing(redis: Redis) -> None:
    """The setting off: the read leaves last_check and agent keys alone."""
    kernel = KernelId(uuid.uuid4())
    seconds, _ = await redis.time()
    await ValkeyPresence(redis).write_presence([kernel], now=float(seconds) - 30)
    before = await redis.hget(presence_key(kernel), "last_check")

    await ValkeyPresence(redis).check_kernel_presence_status_batch([kernel], [AgentId("a9")])

    assert await redis.hget(presence_key(kernel), "last_check") == before
    assert not await redis.exists(agent_last_check_key("a9"))


@pytest.mark.integration
async def test_sweep_scan_stamps_like_a_batch_read(redis: Redis, scan_path: str) -> None:
    """The sweep's page scan writes what a batch read writes: last_check on existing hashes
    (TTL refreshed), the agents' last-check keys; no hash for a kernel without presence."""
    present, absent = KernelId(uuid.uuid4()), KernelId(uuid.uuid4())
    seconds, _ = await redis.time()
    await ValkeyPresence(redis, ttl=50).write_presence([present], now=float(seconds) - 30)
    reader = ValkeyPresence(redis, manager_writes=True, ttl=300)

    found = await reader.scan_for_suspects([present.hex, str(absent)], [AgentId("a1")])

    assert list(found) == [1]
    stamp = await redis.get(agent_last_check_key("a1"))
    assert stamp is not None and int(stamp) >= int(seconds)
    assert await redis.hget(presence_key(present), "last_check") == stamp
    assert 50 < await redis.ttl(presence_key(present)) <= 300
    assert not await redis.exists(presence_key(absent))
    assert 0 < await redis.ttl(agent_last_check_key("a1")) <= C.AGENT_LAST_CHECK_TTL_SEC


@pytest.mark.integration
async def test_sweep_scan_stamps_only_a_last_check_older_than_the_refresh(
    redis: Redis, scan_path: str
) -> None:
    """SC-FA-002 at scale: a last_check younger than the refresh is left as it is (a real
    agent acts on a 600 s gap); an older one, or none, is stamped; the agent key always is."""
    recent, due, unstamped = (KernelId(uuid.uuid4()) for _ in range(3))
    seconds, _ = await redis.time()
    writer = ValkeyPresence(redis)
    await writer.write_presence([recent, due, unstamped], now=float(seconds) - 5)
    await redis.hset(presence_key(recent), "last_check", str(seconds - 10))
    await redis.hset(presence_key(due), "last_check", str(seconds - 100))
    await redis.hdel(presence_key(unstamped), "last_check")
    reader = ValkeyPresence(redis, manager_writes=True, check_refresh=60)

    found = await reader.scan_for_suspects([str(recent), str(due), str(unstamped)], [AgentId("a1")])

    assert found == {}
    stamp = await redis.get(agent_last_check_key("a1"))
    assert stamp is not None and int(stamp) >= int(seconds)
    assert await redis.hget(presence_key(recent), "last_check") == str(seconds - 10).encode()
    assert await redis.hget(presence_key(due), "last_check") == stamp
    assert await redis.hget(presence_key(unstamped), "last_check") == stamp
