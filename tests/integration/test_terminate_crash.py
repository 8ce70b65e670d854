"""A worker SIGKILLed in the middle of terminating 200 kernels over 4 agents loses nothing."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from collections import Counter
from pathlib import Path

import pytest
import redis as sync_redis

from sokovan.db.offload import OffloadedStore
from sokovan.db.repository import NewKernel
from sokovan.scheduler.transitions import request_termination
from sokovan.types import (
    AgentId,
    KernelId,
    KernelStatus,
    ResourceSlot,
    RunId,
    RunStatus,
    SessionId,
    SessionStatus,
)
from tests.agents import RpcClient
from tests.cluster import IMAGE, Cluster, cluster_without_worker
from tests.workers import WorkerProcess, celery_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TERMINATE = "terminate_sessions"
QUEUE = "sokovan"  # the task queue the worker consumes (tasks.app)
AGENTS = ("a1", "a2", "a3", "a4")
SESSIONS = 50  # one kernel on each agent: 200 kernels
# One destroy at a time per agent, 30 ms each: a 50-kernel batch takes one to two seconds,
# long enough to kill the worker in the middle, short against the visibility timeout.
DESTROY_LATENCY = 0.03
# Far longer than a batch, so nothing running is restored. Kombu looks for overdue unacked
# messages when a worker first finds the queue empty, then only every 100 s: the fresh
# worker starts once this has passed, so its first look restores what the dead one held.
REDELIVERY_VISIBILITY_SEC = 8
REPLAN_DEADLINE_SEC = 4


async def place_kernels(c: Cluster) -> dict[KernelId, AgentId]:
    """RUNNING sessions in the database, and the same kernels created on their agents."""
    placed: dict[KernelId, AgentId] = {}
    slots = ResourceSlot.from_json({"cpu": "1", "mem": "1073741824"})
    rpcs = {a: RpcClient(c.agents.addr(a), a) for a in AGENTS}
    for rpc in rpcs.values():
        await rpc.__aenter__()
    try:
        for n in range(SESSIONS):
            sid = SessionId(uuid.uuid4())
            kernels = [
                NewKernel(
                    KernelId(uuid.uuid4()),
                    AgentId(agent_id),
                    IMAGE,
                    slots,
                    cluster_role="main" if i == 0 else "sub",
                    cluster_idx=i + 1,
                    cluster_hostname=f"node{i + 1}",
                )
                for i, agent_id in enumerate(AGENTS)
            ]
            c.repo.create_session(
                session_id=sid, name=f"s{n}", kernels_=kernels, status=SessionStatus.RUNNING
            )
            config = {"image": {"canonical": IMAGE}, "resource_slots": slots.to_json()}
            await asyncio.gather(
                *(
                    rpcs[str(k.agent_id)].call("create_kernels", str(sid), [str(k.id)], [config])
                    for k in kernels
                )
            )
            placed.update({k.id: AgentId(str(k.agent_id)) for k in kernels})
    finally:
        for rpc in rpcs.values():
            await rpc.__aexit__(None, None, None)
    return placed


async def kernels_on_agents(c: Cluster) -> int:
    """How many kernels the four agents still hold."""
    total = 0
    for agent_id in AGENTS:
        async with RpcClient(c.agents.addr(agent_id), agent_id) as rpc:
            total += int((await rpc.call("health"))["kernels"])
    return total


async def wait_destroyed_some(c: Cluster, at_least: int) -> int:
    """Polls the agents until at least `at_least` kernels are gone; returns how many remain."""
    async with asyncio.timeout(60):
        while True:
            remaining = await kernels_on_agents(c)
            if remaining <= 4 * SESSIONS - at_least:
                return remaining
            await asyncio.sleep(0.05)


async def any_running(c: Cluster, placed: dict[KernelId, AgentId]) -> list[KernelId]:
    """Kernels an agent still answers check_running True for."""
    alive: list[KernelId] = []
    for agent_id in AGENTS:
        async with RpcClient(c.agents.addr(agent_id), agent_id) as rpc:
            for kid, owner in placed.items():
                if owner == agent_id and await rpc.call("check_running", str(kid)):
                    alive.append(kid)
    return alive


def idle(c: Cluster, worker: WorkerProcess) -> bool:
    """Whether the queue is empty and the worker has nothing active or reserved."""
    client = sync_redis.Redis.from_url(c.senv.settings.redis_url)
    try:
        if client.llen(QUEUE):
            return False
    finally:
        client.close()
    inspect = c.app.control.inspect(destination=[worker.name], timeout=1.0)
    active, reserved = inspect.active(), inspect.reserved()
    if not active or not reserved:
        return False  # no answer is not an answer
    return not any([*active.values(), *reserved.values()])


def assert_counted_once(c: Cluster, placed: dict[KernelId, AgentId]) -> list[RunId]:
    """Every kernel has exactly one successful destroy outcome across all terminate runs."""
    runs = c.ledger.list_runs(TERMINATE, limit=100)
    ok: Counter[str] = Counter()
    for run in runs:
        items = c.ledger.items(run.id)
        assert len(items) == len({i.item_id for i in items}), f"run {run.id} repeats an item"
        ok.update(i.item_id for i in items if i.ok and not i.skipped)
    assert set(ok) == {str(k) for k in placed}
    assert set(ok.values()) == {1}, [k for k, n in ok.items() if n > 1]
    assert sum(r.succeeded for r in runs) == len(placed)
    return [r.id for r in runs]


async def kill_mid_terminate(c: Cluster) -> tuple[RunId, list[str]]:
    """Starts a terminate run and SIGKILLs its worker mid-way; the run and the batches it held."""
    with celery_worker(c.senv, concurrency=2) as doomed:
        answer = c.send("sokovan.handler.run", handler=TERMINATE, trigger="manual")
        first = RunId(answer["run_id"])
        remaining = await wait_destroyed_some(c, at_least=10)
        os.killpg(doomed.proc.pid, signal.SIGKILL)
        doomed.proc.wait(10)
    held = re.findall(r"destroy_kernels\[([0-9a-f-]+)\] received", doomed.output())
    assert held, "the killed worker held no destroy batch"
    assert remaining > 0, "the fan-out finished before the kill"
    assert c.ledger.get_run(first).status == RunStatus.RUNNING
    return first, held


def replan(c: Cluster, fresh: WorkerProcess, first: RunId) -> None:
    """Recovery abandons the stuck run; the next terminate run re-plans what remains."""
    # The deadline must exceed the run's life: wait until nothing of it is queued or
    # running any more, only what the dead worker held.
    wait_for(lambda: idle(c, fresh), timeout=60, what="the fresh worker idle")
    wait_for(
        lambda: first in c.send("sokovan.maintenance.recover")["abandoned"],
        timeout=60,
        interval=1.0,
        what=f"recovery to abandon run {first}",
    )
    # Recovery starts the next run itself, at once.
    wait_for(
        lambda: any(r.id != first for r in c.ledger.list_runs(TERMINATE, limit=10)),
        timeout=30,
        what="the next terminate run started by recovery",
    )


@pytest.mark.parametrize("mechanism", ["redelivery", "replan"])
async def test_sigkill_mid_terminate_ends_with_every_kernel_terminated_once(
    tmp_path: Path, valkey_url: str, mechanism: str
) -> None:
    """Killing a worker with SIGKILL in the middle of terminating 200 kernels over 4 agents
    still ends with every kernel TERMINATED and each counted exactly once.

    Given 50 RUNNING sessions of 4 kernels (one per agent, sim runtime, 30 ms per destroy,
    one destroy at a time per agent), when termination is requested and the worker's whole
    process group is SIGKILLed after the first kernels are gone (two of the four agent
    batches running, two still queued), a fresh worker finishes the work:
    - redelivery (broker): an 8 s visibility timeout and a fresh worker started after it;
      the batches the dead worker held are restored to the queue and run again (destroying
      an absent kernel succeeds), the chord completes and the one run counts all 200;
    - replan (level-triggered): the default one-hour visibility timeout, so the held batches
      do not come back; the fresh worker runs the two queued batches (recorded in the run as
      they finish), a 4 s run deadline lets `sokovan.maintenance.recover` abandon the stuck
      run and apply what it recorded (or, sooner, finds the dead worker gone), and the next
      terminate run, which recovery starts at once, re-plans only the kernels
      still TERMINATING in the database. (Were the held batches to come back after the
      visibility timeout, their outcomes would be recorded in the abandoned run as well.)
    Either way every kernel ends TERMINATED, no agent runs it, and the ledger has exactly
    one successful outcome per kernel across all runs."""
    settings = {"destroy_concurrency": "1"}
    if mechanism == "redelivery":
        settings["visibility_timeout"] = str(REDELIVERY_VISIBILITY_SEC)
    else:
        settings["run_deadline"] = str(REPLAN_DEADLINE_SEC)
    async with cluster_without_worker(
        tmp_path,
        valkey_url,
        agents=len(AGENTS),
        settings=settings,
        latency={"destroy_kernel": DESTROY_LATENCY},
    ) as c:
        placed = await place_kernels(c)
        assert len(placed) == 4 * SESSIONS
        assert await kernels_on_agents(c) == 4 * SESSIONS
        sids = [s.id for s in c.repo.sessions_in([SessionStatus.RUNNING])]
        assert (
            len(await request_termination(OffloadedStore(c.repo), sids, "USER_REQUESTED"))
            == SESSIONS
        )

        first, held = await kill_mid_terminate(c)
        if mechanism == "redelivery":
            await asyncio.sleep(REDELIVERY_VISIBILITY_SEC + 1)  # as a supervisor restarts later
        with celery_worker(c.senv, concurrency=2) as fresh:
            if mechanism == "replan":
                replan(c, fresh, first)
            wait_for(
                lambda: all(
                    s.status == SessionStatus.TERMINATED for s in c.repo.sessions_by_ids(sids)
                ),
                timeout=200,
                interval=0.5,
                what="every session TERMINATED",
            )
            statuses = c.repo.kernel_statuses(list(placed))
            assert set(statuses.values()) == {KernelStatus.TERMINATED}
            wait_for(
                lambda: not c.ledger.running(TERMINATE), timeout=60, what="terminate runs closed"
            )
            rerun = [t for t in held if f"destroy_kernels[{t}] succeeded" in fresh.output()]
        assert await kernels_on_agents(c) == 0
        assert await any_running(c, placed) == []
        runs = assert_counted_once(c, placed)
        first_run = c.ledger.get_run(first)
        if mechanism == "redelivery":
            assert rerun == held, "the batches the dead worker held were redelivered"
            assert runs == [first]
            assert (first_run.status, first_run.succeeded) == (RunStatus.SUCCEEDED, len(placed))
        else:
            assert rerun == [], "the held batches never came back: re-planning did the work"
            assert first_run.status == RunStatus.ABANDONED
            assert len(runs) == 2
            second = c.ledger.get_run(runs[0])
            assert second.status == RunStatus.SUCCEEDED
            assert second.requested == len(placed) - first_run.succeeded
