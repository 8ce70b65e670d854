"""`sokovan up` stopped and started again: dead kernels are reaped before presence goes stale.

SC-CV-004 (an agent restarted with its id speaks for its node) and SC-CV-010 (every agent
restarted at once) with a persistent Valkey: the presence hashes of kernels that died with
their agents survive the restart and look fresh for up to SOKOVAN_PRESENCE_STALE_AFTER
(120 s by default; raised here so that only the restart can make a kernel a suspect). Each
restarted agent reports when its instance started;
a kernel last present before that start is asked about at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from sokovan import constants as C
from sokovan.db.offload import OffloadedStore
from sokovan.scheduler.agents import sync_agents
from sokovan.types import RunId, RunStatus, SessionId, SessionStatus
from tests.agents import agent_process
from tests.cluster import (
    Cluster,
    cluster_without_worker,
    kernel_processes,
    kernel_rows,
    rpc_ports,
)
from tests.e2e.test_convergence_sweep import evidence_of, kernel_of, restarted, sweep_runs
from tests.e2e.test_sweep import PRESENCE_INTERVAL, running_sessions
from tests.outages import celery_beat, restartable_valkey
from tests.workers import celery_worker, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

SWEEP = "sweep_stale_kernels"
# `sokovan up`'s sweep interval in the issue's target. The stale threshold is raised far past
# the test's length, so staleness cannot be what reaps a kernel however slow the machine is:
# only the restart can make one a suspect.
SETTINGS = {"sweep_interval": "10", "presence_stale_after": "900"}
# Ten kernels die with a1 and a2, two live on b1: the brake's default ratio (0.5) and
# minimum (10 kernels) trip, so the first runs reap at its rate (a fifth of the group).
DEAD_SESSIONS = 10


async def sync(c: Cluster) -> None:
    redis: Redis = Redis.from_url(c.senv.settings.redis_url)
    try:
        await sync_agents(redis, OffloadedStore(c.repo))
    finally:
        await redis.aclose()


async def instances(c: Cluster) -> dict[str, str | None]:
    """Agent id -> the instance id its registration in Valkey names."""
    redis: Redis = Redis.from_url(c.senv.settings.redis_url, decode_responses=True)
    try:
        raw: dict[str, str] = await redis.hgetall(C.AGENT_REGISTRY_KEY)  # type: ignore[assignment]
    finally:
        await redis.aclose()
    return {k: json.loads(v).get("instance_id") for k, v in raw.items()}


def renewed(
    before: dict[str, str | None], now: dict[str, str | None], agents: Iterable[str]
) -> bool:
    """Whether every one of `agents` registered an instance other than its one `before`."""
    return all(now.get(a) not in (None, before.get(a)) for a in agents)


def reaped_per_run(c: Cluster) -> list[tuple[str, int]]:
    """Each finished sweep run's note and how many kernels it reaped, oldest first."""
    out = []
    for run in sorted(sweep_runs(c), key=lambda r: r.id):
        items = c.ledger.items(RunId(run.id))
        out.append((run.note or "", sum(1 for i in items if i.evidence.get("verdict") == "dead")))
    return out


def finished_sweeps(c: Cluster) -> int:
    return sum(1 for r in sweep_runs(c) if r.status != RunStatus.RUNNING)


async def test_sc_cv_004_sc_cv_010_whole_restart_reaps_the_dead_before_presence_is_stale(
    tmp_path: Path,
) -> None:
    """SC-CV-004 / SC-CV-010: the whole cluster stopped and started again, Valkey included.

    Given ten RUNNING sessions on a1 and a2 (process kernels, one daemon) and two on b1
    (another daemon), a persistent Valkey, a stale threshold far past the test (900 s) and a
    10 s sweep interval,
    When the worker stops, the a1/a2 daemon is SIGKILLed (their kernel processes die with
    it), Valkey stops and starts again on its data, a1 and a2 start again with their ids
    and ports, and the worker and beat start again,
    Then every one of the ten sessions ends TERMINATED through the sweep: each kernel
    STALE_KERNEL on its agent's "not running", with evidence naming the agent's restart and
    presence still HEALTHY (not stale: the restart, not the stale threshold, made it a
    suspect), braked runs reaping at most their share; b1's kernels, which b1 still runs,
    and a session started on the restarted a1 stay RUNNING with their processes.
    """
    with restartable_valkey(tmp_path / "valkey") as valkey:
        async with (
            cluster_without_worker(
                tmp_path,
                valkey.url,
                agents=2,
                runtime="process",
                settings=SETTINGS,
                presence_interval=PRESENCE_INTERVAL,
            ) as c,
            agent_process(
                c.senv.settings.redis_url,
                agent_id="b1",
                runtime="process",
                presence_interval=PRESENCE_INTERVAL,
            ),
        ):
            await sync(c)
            with celery_worker(c.senv, concurrency=2):
                dead = running_sessions(
                    c,
                    *({"name": f"d{i}", "agents": [f"a{i % 2 + 1}"]} for i in range(DEAD_SESSIONS)),
                )
                kept = running_sessions(c, *({"name": f"k{i}", "agents": ["b1"]} for i in range(2)))
            dead_kernels = [kernel_of(c, s) for s in dead]
            kept_kernels = [kernel_of(c, s) for s in kept]

            ports = rpc_ports(c.agents)
            before = await instances(c)
            c.agents.proc.kill()
            await c.agents.wait()
            wait_for(
                lambda: all(kernel_processes(k) == [] for k in dead_kernels),
                timeout=30,
                what="the kernels' processes to die with their agents",
            )
            # Down longer than the restart grace: a kernel's last stamp, written before the kill,
            # is then older than its agent's new start by more than the grace, so the restart
            # makes it a suspect. A faster restart leaves it to the stale rule (900 s here).
            valkey.restart(down_for=C.AGENT_RESTART_GRACE_SEC + 1.0)

            async with restarted(c, ports):
                # A restart of the whole cluster: both new instances registered and recorded
                # before the first sweep. Otherwise a loaded machine can let one sweep see a1's
                # restart and the next a2's, five suspects each, below the brake's minimum.
                async with asyncio.timeout(60):
                    while not renewed(before, await instances(c), ports):  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                await sync(c)
                with celery_worker(c.senv, concurrency=2), celery_beat(c.senv):
                    for sid in dead:
                        c.wait_status(sid, SessionStatus.TERMINATED, timeout=240)
                    (fresh,) = running_sessions(c, {"name": "fresh", "agents": ["a1"]})
                    after = finished_sweeps(c)
                    wait_for(
                        lambda: finished_sweeps(c) >= after + 2,
                        timeout=120,
                        what="two more sweeps after a session started on the restarted a1",
                    )
                    await _assert_outcome(c, dead_kernels, kept_kernels, kept, fresh)


async def _assert_outcome(
    c: Cluster,
    dead_kernels: list[str],
    kept_kernels: list[str],
    kept: list[SessionId],
    fresh: SessionId,
) -> None:
    fresh_kernel = kernel_of(c, fresh)
    rows = kernel_rows(c.senv, [*dead_kernels, *kept_kernels, fresh_kernel])
    assert all(rows[k] == ("TERMINATED", "STALE_KERNEL") for k in dead_kernels), rows
    for k in dead_kernels:
        seen: list[dict[str, Any]] = evidence_of(c, k)
        reaped = [e for e in seen if e.get("verdict") == "dead"]
        assert len(reaped) == 1, seen
        assert reaped[0]["check_running"] == "False", seen
        assert reaped[0]["presence"] == "HEALTHY", seen
        assert str(reaped[0]["suspected"]).startswith("agent restarted at"), seen
        assert "after the kernel's last presence" in str(reaped[0]["suspected"]), seen
        assert all(e.get("presence") != "STALE" for e in seen), seen
    for k in [*kept_kernels, fresh_kernel]:
        assert rows[k][0] == "RUNNING" and len(kernel_processes(k)) == 1, rows
        assert all(e.get("verdict") != "dead" for e in evidence_of(c, k))
    assert all(c.session(s).status == SessionStatus.RUNNING for s in [*kept, fresh])
    runs = reaped_per_run(c)
    braked = [n for note, n in runs if "brake" in note]
    assert braked and all(n <= 2 for n in braked), runs
    assert sum(n for _, n in runs) == len(dead_kernels), runs
