"""SC-RC-001 for a launch: the whole worker SIGKILLed while it creates 100 sessions."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections import Counter
from pathlib import Path

import pytest

from sokovan.db.stats import RunStats
from sokovan.types import TERMINAL_SESSION_STATUSES, SessionId, SessionStatus
from tests.cluster import Cluster, cluster_without_worker
from tests.outages import celery_beat, held_batches
from tests.placed import kernels_held, submit_on
from tests.workers import celery_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

AGENTS = [f"a{i}" for i in range(1, 6)]
SESSIONS = 100
# create_kernels takes 2 s on the agent: a creation task (20 sessions) lasts a few seconds,
# so the kill lands while some are recorded and others are still being created.
CREATE_LATENCY = 2.0
DONE = (SessionStatus.RUNNING, *TERMINAL_SESSION_STATUSES)


def statuses(c: Cluster, sids: list[SessionId]) -> Counter[SessionStatus]:
    return Counter(s.status for s in c.repo.sessions_by_ids(sids))


def created_on_agents(c: Cluster) -> Counter[str]:
    return Counter(re.findall(r"created kernel ([0-9a-f-]+)", c.agents.log_tail(1_000_000)))


async def test_sc_rc_001_launch_of_100_sessions_killed_during_creation(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-RC-001 (launch): given 100 one-kernel sessions over 5 agents being created (2 s
    per create_kernels call), default settings and beat running, when the worker's whole
    process group is SIGKILLed after some sessions run and while it holds creation tasks,
    and a worker is restarted, then every session ends RUNNING or failed with its error
    recorded (the abandoned run's unfinished sessions are failed at once and destroyed), no
    kernel is created twice on any agent, the ledger counts each RUNNING kernel created
    exactly once, and the agents hold exactly the kernels of the RUNNING sessions."""
    async with cluster_without_worker(
        tmp_path, valkey_url, agents=len(AGENTS), latency={"create_kernels": CREATE_LATENCY}
    ) as c:
        sids = [submit_on(c, AGENTS[n % 5]) for n in range(SESSIONS)]
        with celery_worker(c.senv, concurrency=2) as doomed:
            c.send("sokovan.handler.run", handler="pull_images")
            wait_for(
                lambda: (
                    statuses(c, sids)[SessionStatus.RUNNING] > 0
                    and held_batches(doomed, "create_kernels", within=1.0)
                ),
                timeout=120,
                interval=0.05,
                what="some sessions RUNNING while creation tasks are held",
            )
            os.killpg(doomed.proc.pid, signal.SIGKILL)
            doomed.proc.wait(10)
        assert statuses(c, sids)[SessionStatus.CREATING] > 0
        with celery_worker(c.senv, concurrency=2), celery_beat(c.senv):
            wait_for(
                lambda: all(s.status in DONE for s in c.repo.sessions_by_ids(sids)),
                timeout=120,
                interval=0.5,
                what="every session RUNNING or finished",
            )
            sessions = c.repo.sessions_by_ids(sids)
            running = [s for s in sessions if s.status == SessionStatus.RUNNING]
            failed = [s for s in sessions if s.status != SessionStatus.RUNNING]
            async with asyncio.timeout(60):  # the failed sessions' kernels are destroyed
                # The agents tell nothing when they are done: poll them.
                while sum((await kernels_held(c, AGENTS)).values()) != len(running):  # noqa: ASYNC110
                    await asyncio.sleep(0.5)
        assert running and failed
        for s in failed:
            assert c.repo.session_status_data(s.id).get("error"), s.id
        assert set(created_on_agents(c).values()) == {1}, "a kernel was created twice"
        counted: Counter[str] = Counter()
        for run in c.ledger.list_runs("start_sessions", limit=100):
            counted.update(i.item_id for i in c.ledger.items(run.id) if i.counted and i.ok)
        assert set(counted.values()) == {1}
        assert set(counted) == {str(k.id) for s in running for k in s.kernels}
        stats = {s.session_id: s for s in RunStats(c.senv.engine).sessions()}
        assert all(stats[str(s.id)].created == 1 for s in running)
