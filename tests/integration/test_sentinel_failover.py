"""SC-HA-001, SC-HA-002: the Valkey primary SIGKILLed under load; Sentinel promotes a replica
and the scheduler goes on, with SQL the authority over what Celery's Redis state lost."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from sokovan.db.offload import OffloadedStore
from sokovan.scheduler.transitions import request_termination
from sokovan.types import TERMINAL_SESSION_STATUSES, KernelStatus, SessionId, SessionStatus
from tests.cluster import IMAGE, Cluster
from tests.outages import tracebacks
from tests.placed import kernels_held, place_sessions
from tests.sentinel import ha_cluster, sentinel_rig
from tests.services import celery_beat
from tests.workers import celery_worker, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.xdist_group("whole-cluster"),
]

TERMINATE = "terminate_sessions"
AGENTS = ("a1", "a2", "a3", "a4")
SESSIONS = 125  # four kernels each, one per agent: 500 kernels
# One destroy at a time per agent, 20 ms each: 125 kernels take each agent about 2.5 s, long
# enough to kill the primary in the middle of the fan-out.
DESTROY_LATENCY = 0.02
# Beat ticks terminate each second and recovery every two; the rest is the defaults.
BEAT = {
    "terminate_interval": "1",
    "recover_interval": "2",
    "destroy_concurrency": "1",
}
WITHIN_SEC = 60.0
LOST_WINDOW_SEC = 5.0


async def wait_destroyed(c: Cluster, at_least: int, total: int) -> None:
    """Polls the agents until at least `at_least` of `total` kernels are gone."""
    async with asyncio.timeout(60):
        while True:
            if sum((await kernels_held(c, AGENTS)).values()) <= total - at_least:
                return
            await asyncio.sleep(0.05)


def counted_once(c: Cluster, kernel_ids: set[str]) -> Counter[str]:
    """Successful destroy outcomes per kernel across every terminate run."""
    ok: Counter[str] = Counter()
    for run in c.ledger.list_runs(TERMINATE, limit=100):
        items = c.ledger.items(run.id)
        assert len(items) == len({i.item_id for i in items}), f"run {run.id} repeats an item"
        ok.update(i.item_id for i in items if i.ok and not i.skipped)
    assert set(ok) == kernel_ids
    return ok


@pytest.mark.parametrize("lost", [0.0, LOST_WINDOW_SEC], ids=["replicated", "lost-writes"])
async def test_primary_sigkilled_mid_termination_of_500_kernels(
    tmp_path: Path, lost: float
) -> None:
    """SC-HA-001: the primary dies while 500 kernels are being terminated.

    Given three Valkey servers and three Sentinels, a worker, beat and four reference agents
    that know only SOKOVAN_REDIS_SENTINELS, and 125 RUNNING sessions of four kernels,
    when termination is requested and the primary is SIGKILLed once the first kernels are
    gone, then Sentinel promotes a replica, every kernel is TERMINATED within 60 s of the
    kill, no agent holds one, each kernel has exactly one successful outcome in the ledger,
    and no run is left `running`.

    lost-writes: the replicas stop taking the replication stream for 5 s before the kill,
    so the promoted one misses what the primary took then: deliveries (their messages come
    back to the queue), acks, chord counters and the run's fan-out counters. The chord of
    the run never completes; its lease lapses, recovery abandons it and the next run
    re-plans from SQL, still within the 60 s."""
    with sentinel_rig(tmp_path / "ha") as rig:
        async with ha_cluster(
            tmp_path, rig, agents=len(AGENTS), latency={"destroy_kernel": DESTROY_LATENCY}, **BEAT
        ) as c:
            placed = await place_sessions(c, [AGENTS] * SESSIONS)
            kernel_ids = {str(k) for kernels in placed.values() for k in kernels}
            assert len(kernel_ids) == 4 * SESSIONS
            with celery_worker(c.senv, concurrency=2) as worker, celery_beat(c.senv) as beat:
                await request_termination(OffloadedStore(c.repo), list(placed), "USER_REQUESTED")
                await wait_destroyed(c, at_least=20, total=len(kernel_ids))
                killed_at = time.monotonic()
                old = rig.kill_primary_losing_writes(lost) if lost else rig.kill_primary()
                new = rig.wait_new_primary(old)
                wait_for(
                    lambda: all(
                        s.status == SessionStatus.TERMINATED
                        for s in c.repo.sessions_by_ids(list(placed))
                    ),
                    timeout=WITHIN_SEC - (time.monotonic() - killed_at),
                    interval=0.5,
                    what="every session TERMINATED within 60 s of the kill",
                )
                took = time.monotonic() - killed_at
                statuses = c.repo.kernel_statuses([k for ks in placed.values() for k in ks])
                assert set(statuses.values()) == {KernelStatus.TERMINATED}
                wait_for(lambda: not c.ledger.running(), timeout=30, what="no run running")
                logs = (worker.output(), beat.output())
            assert sum((await kernels_held(c, AGENTS)).values()) == 0
            ok = counted_once(c, kernel_ids)
            assert set(ok.values()) == {1}, [k for k, n in ok.items() if n > 1]
            runs = [(r.id, r.status, r.succeeded, r.error) for r in c.ledger.list_runs(TERMINATE)]
            print(f"primary {old} -> {new}; all TERMINATED {took:.1f}s after the kill; {runs}")
            assert_no_task_failed(*logs)


def assert_no_task_failed(*logs: str) -> None:
    """No task raised past its own handling (connection errors while failing over are logged
    by Celery as warnings, with their traceback, and are allowed)."""
    failed = [t for t in tracebacks(*logs) if "raised unexpected" in t]
    assert failed == []


BURST = 200
# A quarter core each: the four agents (8 cores each) hold 128; the rest wait PENDING.
SMALL = {"cpu": "0.25", "mem": str(2**20)}
PER_AGENT = 32
SETTLED = (SessionStatus.RUNNING, SessionStatus.PENDING, *TERMINAL_SESSION_STATUSES)


def answered(c: Cluster, task_ids: list[str]) -> dict[str, str]:
    """Task id -> session id of the creates whose answer the result backend holds."""
    out = {}
    for tid in task_ids:
        meta = c.app.backend.get_task_meta(tid)
        if meta.get("status") == "SUCCESS" and "session_id" in (meta.get("result") or {}):
            out[tid] = meta["result"]["session_id"]
    return out


async def test_primary_sigkilled_during_a_burst_of_200_creates(tmp_path: Path) -> None:
    """SC-HA-002: the primary dies during a burst of 200 session creates.

    Given the Sentinel rig, a worker, beat and four reference agents (8 cores each, 0.2 s
    per create), when 200 one-kernel sessions of a quarter core are sent and the primary is
    SIGKILLed once the agents hold their first kernels, then every session the scheduler
    answered for ends RUNNING, PENDING or finished with a reason; no kernel is created twice
    on an agent; and no agent ever holds more kernels than its capacity fits."""
    settings = {**BEAT, "launch_interval": "1"}
    with sentinel_rig(tmp_path / "ha") as rig:
        async with ha_cluster(
            tmp_path, rig, agents=len(AGENTS), latency={"create_kernels": 0.2}, **settings
        ) as c:
            with celery_worker(c.senv, concurrency=4) as worker, celery_beat(c.senv) as beat:
                sent = [
                    c.app.send_task(
                        "sokovan.session.create",
                        kwargs={"request": {"image": IMAGE, "resource_slots": SMALL}},
                    ).id
                    for _ in range(BURST)
                ]
                peak: dict[str, int] = {}

                async def held() -> int:
                    counts = await kernels_held(c, AGENTS)
                    for agent, n in counts.items():
                        peak[agent] = max(peak.get(agent, 0), n)
                    return sum(counts.values())

                async with asyncio.timeout(60):
                    while True:
                        if await held() >= 10:
                            break
                        await asyncio.sleep(0.05)
                old = rig.kill_primary()
                rig.wait_new_primary(old)
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    await held()
                    sids = list(answered(c, sent).values())
                    sessions = c.repo.sessions_by_ids([SessionId(uuid.UUID(s)) for s in sids])
                    settled = sessions and all(s.status in SETTLED for s in sessions)
                    if settled and not c.ledger.running():
                        break
                    await asyncio.sleep(0.5)
                acknowledged = answered(c, sent)
                sessions = c.repo.sessions_by_ids(
                    [SessionId(uuid.UUID(s)) for s in acknowledged.values()]
                )
                logs = (worker.output(), beat.output())
            unsettled = [(s.id, s.status) for s in sessions if s.status not in SETTLED]
            assert unsettled == []
            for s in sessions:
                if s.status not in (SessionStatus.RUNNING, SessionStatus.PENDING):
                    assert s.status_info, f"session {s.id} ended {s.status} without a reason"
            created = Counter(re.findall(r"created kernel ([0-9a-f-]+)", c.agents.log_tail(10**6)))
            assert created and all(n == 1 for n in created.values()), created.most_common(3)
            assert max(peak.values()) <= PER_AGENT, peak
            everything = c.repo.sessions_in(list(SessionStatus))
            placed = Counter(
                str(k.agent_id)
                for s in everything
                if s.status not in TERMINAL_SESSION_STATUSES
                for k in s.kernels
                if k.agent_id
            )
            assert max(placed.values()) <= PER_AGENT, placed
            statuses = Counter(s.status for s in everything)
            print(f"{len(acknowledged)}/{BURST} answered; {len(everything)} in SQL: {statuses}")
            assert_no_task_failed(*logs)
