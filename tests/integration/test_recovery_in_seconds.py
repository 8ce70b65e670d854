"""SC-CV-008: a whole worker tree SIGKILLed mid-terminate is recovered because its holder is
known gone, not because its lease lapsed; a saturated live worker keeps its run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest

from sokovan.db.offload import OffloadedStore
from sokovan.scheduler.leases import HOLDER_GONE
from sokovan.scheduler.transitions import request_termination
from sokovan.types import KernelId, KernelStatus, RunId, RunStatus, SessionId, SessionStatus
from tests.cluster import Cluster, cluster_without_worker
from tests.outages import celery_beat, held_batches
from tests.placed import kernels_held, place_sessions
from tests.workers import celery_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TERMINATE = "terminate_sessions"
AGENTS = [f"a{i}" for i in range(1, 6)]
SESSIONS = 40  # one kernel on each agent: 200 kernels, 40 per agent batch
# Four destroys at a time, 0.3 s each: a batch lasts about 3 s, long enough to kill mid-way.
SETTINGS = {
    "destroy_concurrency": "4",
    # Far longer than the test may take: the old path (the lease lapsing) cannot be what
    # recovers the killed run.
    "claim_lifetime": "120",
}
LATENCY = {"destroy_kernel": 0.3}
# Well inside the 120 s lease: whatever recovers the run within this is not its lapse.
WITHIN = 90.0


def terminated(c: Cluster, kids: list[KernelId]) -> set[KernelId]:
    return {k for k, s in c.repo.kernel_statuses(kids).items() if s == KernelStatus.TERMINATED}


def assert_counted_once(c: Cluster, kids: list[KernelId]) -> list[RunId]:
    """One counted ok outcome per kernel across the terminate runs; returns their ids."""
    runs = c.ledger.list_runs(TERMINATE, limit=100)
    ok: Counter[str] = Counter()
    for run in runs:
        ok.update(i.item_id for i in c.ledger.items(run.id) if i.counted and i.ok)
    assert set(ok) == {str(k) for k in kids} and set(ok.values()) == {1}
    assert sum(r.succeeded for r in runs) == len(kids)
    return [r.id for r in runs]


def cpu_hog() -> subprocess.Popen[bytes]:
    """A process that keeps one core busy until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


async def placed_for_termination(c: Cluster) -> tuple[list[SessionId], list[KernelId]]:
    placed = await place_sessions(c, [AGENTS] * SESSIONS)
    await request_termination(OffloadedStore(c.repo), list(placed), "USER_REQUESTED")
    return list(placed), [k for kernels in placed.values() for k in kernels]


@pytest.mark.parametrize("mode", ["restart", "takeover"])
async def test_sc_cv_008_a_killed_workers_run_is_recovered_as_holder_gone(
    tmp_path: Path, valkey_url: str, mode: str
) -> None:
    """SC-CV-008.

    Given 40 RUNNING sessions of 5 kernels (200 kernels, 0.3 s per destroy) and a 120 s
    lease, when the terminate run is under way and the worker's whole process group is
    SIGKILLed while it holds a batch,
    - restart: the worker is started again under the same node name (no beat): at boot it
      replaces its previous incarnation and asks for recovery;
    - takeover: a second worker node runs all along, with beat (recovery every 5 s): the
      killed worker's liveness key lapses;
    either way the killed run is abandoned as "a worker doing its work is gone" (not as a
    lapsed lease, which would take 120 s), the next run is started at once and re-plans
    what is left, every kernel ends TERMINATED and none is left on an agent, and the
    ledger counts each kernel once."""
    async with cluster_without_worker(
        tmp_path, valkey_url, agents=len(AGENTS), settings=SETTINGS, latency=LATENCY
    ) as c:
        sids, kids = await placed_for_termination(c)
        assert len(kids) == 200
        node = f"doomed-{mode}@localhost"
        with ExitStack() as stack:
            with celery_worker(c.senv, concurrency=2, node=node) as doomed:
                first = RunId(c.send("sokovan.handler.run", handler=TERMINATE)["run_id"])
                wait_for(lambda: held_batches(doomed, "destroy_kernels"), 60, 0.05, "a batch")
                if mode == "takeover":
                    stack.enter_context(celery_worker(c.senv, concurrency=2))
                    stack.enter_context(celery_beat(c.senv))
                wait_for(
                    lambda: (
                        len(terminated(c, kids)) >= 20 and held_batches(doomed, "destroy_kernels")
                    ),
                    timeout=60,
                    interval=0.05,
                    what="kernels TERMINATED while the doomed worker holds a batch",
                )
                os.killpg(doomed.proc.pid, signal.SIGKILL)
                doomed.proc.wait(10)
            assert c.ledger.get_run(first).status == RunStatus.RUNNING
            if mode == "restart":
                stack.enter_context(celery_worker(c.senv, concurrency=2, node=node))
            wait_for(
                lambda: terminated(c, kids) == set(kids),
                timeout=WITHIN,
                interval=0.5,
                what="every kernel TERMINATED",
            )
            wait_for(lambda: not c.ledger.running(TERMINATE), timeout=30, what="runs closed")
        killed_run = c.ledger.get_run(first)
        assert killed_run.status == RunStatus.ABANDONED
        assert (killed_run.note or "").startswith(HOLDER_GONE), killed_run.note
        runs = assert_counted_once(c, kids)
        assert len(runs) >= 2
        assert all(c.ledger.get_run(r).status == RunStatus.SUCCEEDED for r in runs if r != first)
        assert all(s.status == SessionStatus.TERMINATED for s in c.repo.sessions_by_ids(sids))
        assert sum((await kernels_held(c, AGENTS)).values()) == 0


async def test_sc_cv_008_a_saturated_live_worker_keeps_its_run(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-CV-008: a briefly saturated worker does not lose a live run.

    Given one worker process, a CPU hog beside it, and a terminate run of 200 kernels in
    five agent batches of about 3 s each (so the last batches wait in the queue for longer
    than a worker's liveness key lives), with recovery ticking every second, the run is
    never abandoned: it ends SUCCEEDED and counts every kernel once (beat's later runs
    find nothing left)."""
    settings = {**SETTINGS, "recover_interval": "1"}
    async with cluster_without_worker(
        tmp_path, valkey_url, agents=len(AGENTS), settings=settings, latency=LATENCY
    ) as c:
        sids, kids = await placed_for_termination(c)
        hog = cpu_hog()
        try:
            with celery_worker(c.senv, concurrency=1), celery_beat(c.senv):
                first = RunId(c.send("sokovan.handler.run", handler=TERMINATE)["run_id"])
                wait_for(
                    lambda: c.ledger.get_run(first).status != RunStatus.RUNNING,
                    timeout=WITHIN,
                    interval=0.5,
                    what=f"run {first} closed",
                )
        finally:
            hog.kill()
            hog.wait(10)
        run = c.ledger.get_run(first)
        assert (run.status, run.succeeded) == (RunStatus.SUCCEEDED, len(kids)), run.note
        runs = assert_counted_once(c, kids)
        assert all(c.ledger.get_run(r).status != RunStatus.ABANDONED for r in runs)
        assert terminated(c, kids) == set(kids)
        assert all(s.status == SessionStatus.TERMINATED for s in c.repo.sessions_by_ids(sids))
