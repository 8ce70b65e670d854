"""SC-FA-003 and SC-CV-004 end to end: a stranger at a lost agent's address cannot get its
kernels killed; the same agent id restarted there speaks for them."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from sokovan.db.offload import OffloadedStore
from sokovan.scheduler.agents import sync_agents
from sokovan.types import RunId, RunStatus, SessionStatus
from tests.agents import agent_process
from tests.cluster import Cluster, kernel_rows, rpc_ports, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SWEEP = "sweep_stale_kernels"


def sweep_items(c: Cluster, status: RunStatus) -> dict[str, dict[str, object]]:
    answer = c.send("sokovan.handler.run", handler=SWEEP, trigger="beat")
    assert answer["status"] == status, answer
    items = c.ledger.items(RunId(answer["run_id"]))
    return {i.item_id: {"skipped": i.skipped, **i.evidence} for i in items}


async def _sync(c: Cluster) -> None:
    redis: Redis = Redis.from_url(c.senv.settings.redis_url)
    try:
        await sync_agents(redis, OffloadedStore(c.repo))
    finally:
        await redis.aclose()


async def test_sc_fa_003_stranger_at_a_lost_agents_address_kills_nothing(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-FA-003, SC-CV-004: a stranger at a1's address kills nothing; a1 itself does.

    Given a RUNNING kernel on reference agent a1,
    When a1 stops and a reference agent with another id (b1) listens at a1's address,
    Then the sweep asks, is answered by a stranger, and skips the kernel with
    "unverified: identity" in its evidence (the run `partial`); the kernel stays RUNNING.
    When a reference agent with a1's own id but a new instance (recorded by the next sync)
    listens there instead, Then it speaks for its node: it does not run the kernel, so the
    sweep reaps it (STALE_KERNEL). Before this, the new instance was taken for a stranger too.
    """
    async with running_cluster(tmp_path, valkey_url, agents=1, runtime="sim") as c:
        sid = c.create(agents=["a1"])
        session = c.wait_status(sid, SessionStatus.RUNNING)
        kid = str(session.kernels[0].id)
        port = rpc_ports(c.agents)["a1"]
        await c.agents.stop()  # a1 is lost; its presence goes with it

        url = c.senv.settings.redis_url
        async with agent_process(url, agent_id="b1", extra_args=["--port", str(port)]):
            items = sweep_items(c, RunStatus.PARTIAL)
        assert items[kid]["skipped"] and items[kid]["check_running"] == "identity"
        assert "'b1'" in str(items[kid]["identity"])
        assert kernel_rows(c.senv, [kid])[kid][0] == "RUNNING"

        async with agent_process(url, agent_id="a1", extra_args=["--port", str(port)]):
            await _sync(c)
            items = sweep_items(c, RunStatus.SUCCEEDED)
        assert not items[kid]["skipped"] and items[kid]["check_running"] == "False"
        assert items[kid]["verdict"] == "dead" and "identity" not in items[kid]
        assert kernel_rows(c.senv, [kid])[kid] == ("TERMINATED", "STALE_KERNEL")
        assert c.session(sid).status != SessionStatus.RUNNING
