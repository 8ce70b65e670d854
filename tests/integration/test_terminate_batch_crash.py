"""A worker SIGKILLed while it ends thousands of sessions sent as batches loses none of them."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections import Counter
from pathlib import Path

import pytest

from sokovan import constants as C
from sokovan.db.repository import NewKernel
from sokovan.types import KernelId, ResourceSlot, SessionId, SessionStatus
from tests.agents import RpcClient
from tests.cluster import IMAGE, Cluster, cluster_without_worker
from tests.e2e.test_sweep import running_sessions
from tests.outages import celery_beat
from tests.workers import celery_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PENDING = 3000
# Two agents of 8 CPUs full: no cancellation lets the queue place a PENDING session.
LIVE = 16
# Far longer than a batch, so nothing running is restored; the fresh worker starts after it,
# so its first look at the queue restores what the dead one held (see test_terminate_crash).
REDELIVERY_VISIBILITY_SEC = 8
ENDED = (SessionStatus.TERMINATED, SessionStatus.CANCELLED)


def store_pending(c: Cluster, count: int) -> list[SessionId]:
    """PENDING sessions written straight to the database, one kernel each, no agent."""
    slots = ResourceSlot.from_json({"cpu": "1", "mem": "1048576"})
    ids = []
    with c.senv.engine.begin() as conn:
        for n in range(count):
            sid = SessionId(uuid.uuid4())
            kernel = NewKernel(KernelId(uuid.uuid4()), None, IMAGE, slots)
            c.repo.create_session(
                session_id=sid,
                name=f"p{n}",
                kernels_=[kernel],
                status=SessionStatus.PENDING,
                conn=conn,
            )
            ids.append(sid)
    return ids


def statuses(c: Cluster, sids: list[SessionId]) -> Counter[str]:
    return Counter(str(s.status) for s in c.repo.sessions_by_ids(sids))


async def kernels_held(c: Cluster, agents: list[str]) -> int:
    total = 0
    for agent_id in agents:
        async with RpcClient(c.agents.addr(agent_id), agent_id) as rpc:
            total += int((await rpc.call("health"))["kernels"])
    return total


async def test_sc_op_004_sigkill_mid_batch_terminate_ends_every_session_once(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-OP-004 with a crash: Given 3,000 PENDING sessions and 16 RUNNING ones filling two
    agents, sent as four `sokovan.sessions.terminate` messages, when the worker's whole
    process group is SIGKILLed as soon as the first sessions are cancelled (messages still
    unacked or queued), and a fresh worker (another node) and beat start after the visibility
    timeout, then every session ends (the PENDING ones CANCELLED, the RUNNING ones TERMINATED
    once recovery has freed the dead worker's run), the agents hold no kernel, and each
    RUNNING kernel has exactly one successful destroy in the ledger: a batch delivered again
    ends nothing twice."""
    # One destroy at a time per agent, 0.5 s each: the live sessions' run lasts about 4 s, so
    # the kill lands before it ends, however fast the cancellations went.
    settings = {
        "visibility_timeout": str(REDELIVERY_VISIBILITY_SEC),
        "destroy_concurrency": "1",
    }
    async with cluster_without_worker(
        tmp_path, valkey_url, agents=2, settings=settings, latency={"destroy_kernel": 0.5}
    ) as c:
        agents = sorted(c.agents.agents)
        with celery_worker(c.senv, concurrency=2):
            live = running_sessions(
                c, *({"name": f"r{i}", "agents": [agents[i % 2]]} for i in range(LIVE))
            )
        live_kernels = {str(k.id) for s in c.repo.sessions_by_ids(live) for k in s.kernels}
        pending = store_pending(c, PENDING)
        ids = [str(s) for s in [*live, *pending]]
        step = C.SESSION_BATCH_MAX
        for i in range(0, len(ids), step):
            c.app.send_task("sokovan.sessions.terminate", kwargs={"session_ids": ids[i : i + step]})

        with celery_worker(c.senv, concurrency=2) as doomed:
            wait_for(
                lambda: statuses(c, pending)["CANCELLED"] > 0,
                timeout=60,
                interval=0.02,
                what="the first sessions cancelled",
            )
            os.killpg(doomed.proc.pid, signal.SIGKILL)
            doomed.proc.wait(10)
        at_kill = statuses(c, [*live, *pending])
        assert sum(n for s, n in at_kill.items() if s not in ENDED) > 0, at_kill

        await asyncio.sleep(REDELIVERY_VISIBILITY_SEC + 1)  # as a supervisor restarts later
        with celery_worker(c.senv, concurrency=2), celery_beat(c.senv):
            wait_for(
                lambda: set(statuses(c, [*live, *pending])) <= {str(s) for s in ENDED},
                timeout=120,
                interval=0.5,
                what="every session ended",
            )
            wait_for(
                lambda: not c.ledger.running("terminate_sessions"),
                timeout=60,
                what="terminate runs closed",
            )
        assert statuses(c, pending) == Counter({"CANCELLED": PENDING})
        assert statuses(c, live) == Counter({"TERMINATED": LIVE})
        assert await kernels_held(c, agents) == 0
        ok: Counter[str] = Counter()
        for run in c.ledger.list_runs("terminate_sessions", limit=100):
            ok.update(i.item_id for i in c.ledger.items(run.id) if i.ok and not i.skipped)
        assert set(ok) == live_kernels and set(ok.values()) == {1}, ok
