"""Presence as Backend.AI's own schedule client writes and reads it, against our sweep's stage 1.

The agent's code runs in its own venv (Python 3.13) through tests/interop/bai_schedule.py,
on the session's embedded Valkey, in the database a real agent uses (its live db, 2).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Final

import pytest
from redis.asyncio import Redis

from sokovan import constants as C
from sokovan.config import Settings
from sokovan.presence import ValkeyPresence, agent_last_check_key, presence_key
from sokovan.scheduler.terminator.stale import read_presence
from sokovan.types import AgentId, HealthCheckStatus, KernelId, KernelInfo, SessionId
from tests.interop.conftest import run_bai_driver

# A real agent destroys a kernel whose last_check lags its agent's last check by more than this.
ORPHAN_KERNEL_THRESHOLD_SEC: Final = 600

pytestmark = [pytest.mark.interop, pytest.mark.xdist_group("interop")]

DRIVER = Path(__file__).with_name("bai_schedule.py")


async def backend_ai(valkey_url: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """Runs one operation of Backend.AI's ValkeyScheduleClient in the agent's venv."""
    return await run_bai_driver(DRIVER, valkey_url, C.PRESENCE_DB, request)


@pytest.fixture
async def live_db(valkey_url: str) -> AsyncIterator[Redis]:
    """Our client of the presence store, as build_services configures it by default."""
    settings = Settings(redis_url=valkey_url)
    client: Redis = Redis.from_url(settings.effective_presence_url)
    yield client
    await client.aclose()


def _kernels(count: int, agent_id: str) -> list[KernelInfo]:
    return [
        KernelInfo(KernelId(uuid.uuid4()), SessionId(uuid.uuid4()), AgentId(agent_id))
        for _ in range(count)
    ]


async def test_presence_written_by_backend_ai_is_healthy_then_stale(
    valkey_url: str, live_db: Redis
) -> None:
    """SC-FA-001: presence from Backend.AI's update_kernel_presence_batch is HEALTHY in stage 1.

    Given kernels whose presence the agent's own client wrote (and one it wrote long ago),
    When our stage 1 reads the default presence store,
    Then the fresh ones are HEALTHY and not candidates, and the old one is a STALE candidate.
    """
    fresh = _kernels(3, "i-field-1")
    old = _kernels(1, "i-field-1")[0]
    await backend_ai(
        valkey_url, {"op": "update", "kernels": {str(k.id): True for k in [*fresh, old]}}
    )
    # The agent stopped refreshing ten minutes ago: rewrite its stamp, keep its hash.
    seconds, _ = await live_db.time()
    await live_db.hset(presence_key(old.id), "last_presence", str(int(seconds) - 600))
    presence = ValkeyPresence(live_db)

    statuses = await presence.check_kernel_presence_status_batch([k.id for k in [*fresh, old]])
    judgement = await read_presence(presence, [*fresh, old])

    assert [statuses[k.id].presence for k in fresh] == [HealthCheckStatus.HEALTHY] * 3
    assert statuses[old.id].presence == HealthCheckStatus.STALE
    assert [e.kernel_id for e in judgement.candidates] == [old.id]
    assert judgement.candidates[0].presence == HealthCheckStatus.STALE


async def test_sweep_writes_are_read_back_by_backend_ai(valkey_url: str, live_db: Redis) -> None:
    """SC-FA-002: our sweep's last_check and agent last-check are what the agent's client reads.

    Given presence written by the agent's own client for two kernels of one agent,
    When our stage 1 reads them with manager writes on (the default),
    Then Backend.AI's get_kernel_presence_batch sees each kernel's last_check at the server's
    time of our read, and get_agent_last_check the same stamp, with Backend.AI's lifetime.
    """
    agent = f"i-field-{uuid.uuid4().hex[:8]}"
    kernels = _kernels(2, agent)
    await backend_ai(valkey_url, {"op": "update", "kernels": {str(k.id): True for k in kernels}})
    assert Settings().presence_manager_writes
    before, _ = await live_db.time()
    presence = ValkeyPresence(live_db, manager_writes=True)

    judgement = await read_presence(presence, kernels)

    after, _ = await live_db.time()
    assert judgement.candidates == ()
    seen = await backend_ai(
        valkey_url, {"op": "read", "kernels": [str(k.id) for k in kernels], "agent": agent}
    )
    stamp = seen["agent_last_check"]
    assert stamp is not None and int(before) <= stamp <= int(after)
    assert {k: v["last_check"] for k, v in seen["kernels"].items()} == dict.fromkeys(
        (str(k.id) for k in kernels), stamp
    )
    assert {v["presence"] for v in seen["kernels"].values()} == {"healthy"}
    assert 0 < await live_db.ttl(agent_last_check_key(agent)) <= C.AGENT_LAST_CHECK_TTL_SEC


async def test_orphan_rule_of_the_agent_holds_for_an_untracked_kernel(
    valkey_url: str, live_db: Redis
) -> None:
    """SC-FA-002: a kernel we stopped checking falls behind its agent's last check.

    Given two kernels of one agent with presence from the agent's client, both checked once,
    When later sweeps check only one of them (the other is no longer RUNNING for us),
    Then, read through Backend.AI's client, the untracked kernel's last_check lags the agent's
    last check while the tracked one's keeps up: the gap the agent's orphan cleanup measures.
    """
    agent = f"i-field-{uuid.uuid4().hex[:8]}"
    tracked, dropped = _kernels(2, agent)
    await backend_ai(
        valkey_url, {"op": "update", "kernels": {str(tracked.id): True, str(dropped.id): True}}
    )
    presence = ValkeyPresence(live_db, manager_writes=True)
    await read_presence(presence, [tracked, dropped])
    # Ten minutes and more pass for the dropped kernel: age its stamp instead of waiting.
    seconds, _ = await live_db.time()
    aged = int(seconds) - ORPHAN_KERNEL_THRESHOLD_SEC - 60
    await live_db.hset(presence_key(dropped.id), "last_check", str(aged))

    await read_presence(presence, [tracked])

    seen = await backend_ai(
        valkey_url,
        {"op": "read", "kernels": [str(tracked.id), str(dropped.id)], "agent": agent},
    )
    agent_check = seen["agent_last_check"]
    assert seen["kernels"][str(tracked.id)]["last_check"] == agent_check
    lag = agent_check - seen["kernels"][str(dropped.id)]["last_check"]
    assert lag > ORPHAN_KERNEL_THRESHOLD_SEC
