"""SC-RC-003 end to end: a paused worker loses its lease; when it resumes, it is fenced."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from redis.asyncio import Redis

from sokovan.db.offload import OffloadedStore
from sokovan.db.stats import RunStats
from sokovan.scheduler.claims import RedisClaims
from sokovan.scheduler.handlers.terminate_sessions import LOCK_ID
from sokovan.scheduler.transitions import request_termination
from sokovan.types import KernelStatus, RunId, RunStatus
from tests.agents import set_fault
from tests.cluster import Cluster, cluster_without_worker
from tests.outages import celery_beat
from tests.placed import kernels_held, place_sessions
from tests.workers import WorkerProcess, celery_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TERMINATE = "terminate_sessions"
KERNELS = 10
# Short lease and quick ticks so the test sees a lapse, an abandonment and a re-plan soon.
SETTINGS = {"claim_lifetime": "3", "recover_interval": "1", "terminate_interval": "1"}


def destroy_taken(worker: WorkerProcess) -> bool:
    return bool(re.search(r"destroy_kernels\[[0-9a-f-]+\] received", worker.output()))


def signal_group(worker: WorkerProcess, sig: int) -> None:
    os.killpg(worker.proc.pid, sig)


async def test_sc_rc_003_paused_holder_can_neither_renew_nor_record(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-RC-003: given a worker whose destroy batch of 10 kernels is in flight (the agent
    holds the calls for 2 s), when the worker's whole process group is paused (SIGSTOP) for
    longer than the 3 s lease, then recovery abandons its run, a second worker's next run
    re-plans and destroys the 10 kernels and counts them; when the paused worker resumes
    (SIGCONT), its token renews nothing, what its batch did lands in the abandoned run as evidence
    only (nothing counted, nothing moved), and every kernel is counted once."""
    async with cluster_without_worker(tmp_path, valkey_url, settings=SETTINGS) as c:
        placed = await place_sessions(c, [["a1"] * KERNELS])
        kids = [k for ks in placed.values() for k in ks]
        await set_fault(
            c.senv.settings.redis_url,
            "a1",
            {"op": "hang", "method": "destroy_kernel", "seconds": 2.0},
        )
        await request_termination(OffloadedStore(c.repo), list(placed), "USER_REQUESTED")
        with celery_worker(c.senv, concurrency=1) as paused:
            first = RunId(c.send("sokovan.handler.run", handler=TERMINATE)["run_id"])
            wait_for(lambda: destroy_taken(paused), timeout=30, what="the batch in flight")
            signal_group(paused, signal.SIGSTOP)
            try:
                await set_fault(c.senv.settings.redis_url, "a1", {"op": "clear"})
                with celery_worker(c.senv, concurrency=1), celery_beat(c.senv):
                    wait_for(
                        lambda: _done(c, first),
                        timeout=60,
                        interval=0.5,
                        what="the run abandoned and the kernels destroyed by the next run",
                    )
            finally:
                signal_group(paused, signal.SIGCONT)
            wait_for(
                lambda: "kept as evidence only" in paused.output(),
                timeout=30,
                what="the resumed worker's batch fenced",
            )
        run = c.ledger.get_run(first)
        assert run.claim_token is not None
        redis: Redis = Redis.from_url(c.senv.settings.redis_url)
        try:  # the resumed holder's token renews nothing any more
            assert not await RedisClaims(redis).renew(LOCK_ID, run.claim_token, 3.0)
        finally:
            await redis.aclose()
        assert (run.status, run.succeeded, run.failed) == (RunStatus.ABANDONED, 0, 0)
        late = c.ledger.items(first)
        assert len(late) == KERNELS and not any(i.counted for i in late)
        later = [r for r in c.ledger.list_runs(TERMINATE, limit=20) if r.id != first]
        assert sum(r.succeeded for r in later) == KERNELS
        assert set(c.repo.kernel_statuses(kids).values()) == {KernelStatus.TERMINATED}
        (stats,) = RunStats(c.senv.engine).handlers(handler=TERMINATE)
        assert stats.succeeded == KERNELS
        assert (await kernels_held(c, ["a1"]))["a1"] == 0


def _done(c: Cluster, first: RunId) -> bool:
    if c.ledger.get_run(first).status != RunStatus.ABANDONED:
        return False
    later = [r for r in c.ledger.list_runs(TERMINATE, limit=20) if r.id != first]
    return sum(r.succeeded for r in later) == KERNELS
