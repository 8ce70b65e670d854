"""The run ledger against real processes: a Celery worker killed mid-batch, a reference
agent over real RPC, Valkey as broker, and SQLite built by the migrations."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from sokovan.db.ledger import RunLedger
from sokovan.db.repository import NewKernel, SchedulerRepository
from sokovan.records import AgentRow
from sokovan.types import (
    AgentId,
    KernelId,
    KernelStatus,
    ResourceSlot,
    RunStatus,
    SessionId,
    SessionStatus,
)
from tasks.app import create_app
from tests.agents import RpcClient, agent_process
from tests.workers import SchedulerEnv, celery_worker, make_env

pytestmark = pytest.mark.integration

KERNELS = 6
AGENT = "slow1"


async def agent_kernels(addr: str) -> dict[str, Any]:
    """The kernels the reference agent holds right now."""
    async with RpcClient(addr, AGENT) as rpc:
        status = await rpc.call("sokovan_control", {"op": "status"})
    return dict(status["kernels"])


async def until(predicate: Any, within: float, what: str) -> Any:
    """Polls an async predicate until it returns something truthy."""
    try:
        async with asyncio.timeout(within):
            while not (value := await predicate()):  # noqa: ASYNC110 - state lives in other processes
                await asyncio.sleep(0.1)
            return value
    except TimeoutError:
        pytest.fail(f"timed out after {within}s waiting for {what}")


async def terminating_session_on_agent(
    senv: SchedulerEnv, addr: str
) -> tuple[SessionId, list[KernelId]]:
    """Kernels that really exist on the agent, and their TERMINATING session in SQL."""
    sid = SessionId(uuid.uuid4())
    kids = [KernelId(uuid.uuid4()) for _ in range(KERNELS)]
    config = {"image": {"canonical": "cr.backend.ai/stable/python:3.11"}, "resource_slots": {}}
    async with RpcClient(addr, AGENT) as rpc:
        await rpc.call(
            "create_kernels", str(sid), [str(k) for k in kids], [config] * KERNELS, {}, {}
        )
    repo = SchedulerRepository(senv.engine)
    repo.upsert_agent(AgentRow(AgentId(AGENT), addr))
    repo.create_session(
        session_id=sid,
        name="doomed",
        kernels_=[
            NewKernel(
                k,
                AgentId(AGENT),
                "cr.backend.ai/stable/python:3.11",
                ResourceSlot.from_json({"cpu": "1", "mem": "1073741824"}),
                cluster_idx=i + 1,
                cluster_hostname=f"k{i + 1}",
            )
            for i, k in enumerate(kids)
        ],
        status=SessionStatus.TERMINATING,
    )
    return sid, kids


def pool_children(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


@pytest.mark.timeout(120)
async def test_sc_rl_008_worker_killed_mid_batch_is_redelivered_and_counted_once(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-RL-008: Given a destroy batch of 6 kernels against a slow reference agent,
    when the prefork child running it is killed with SIGKILL after some kernels are gone,
    then acks-late redelivers the batch, the run completes with 6 items each counted
    once, every kernel is TERMINATED in SQL and none is left on the agent."""
    senv = make_env(tmp_path, valkey_url, destroy_concurrency="1")
    ledger = RunLedger(senv.engine)
    async with agent_process(
        senv.settings.redis_url, agent_id=AGENT, latency={"destroy_kernel": 0.4}
    ) as agents:
        sid, kids = await terminating_session_on_agent(senv, agents.addr())
        with celery_worker(senv, concurrency=1) as worker:
            (child,) = pool_children(worker.proc.pid)
            create_app(senv.settings).send_task(
                "sokovan.handler.run", kwargs={"handler": "terminate_sessions"}
            )

            async def some_destroyed() -> int:
                left = len(await agent_kernels(agents.addr()))
                return KERNELS - left if 0 < left < KERNELS else 0

            destroyed_before_kill = await until(some_destroyed, 60, "the batch to be under way")
            os.kill(child.pid, signal.SIGKILL)

            def closed() -> bool:
                return any(r.finished_at for r in ledger.list_runs("terminate_sessions"))

            async def run_closed() -> bool:
                return await asyncio.to_thread(closed)

            await until(run_closed, 90, "the redelivered batch to complete the run")
            log = worker.output()

        assert await agent_kernels(agents.addr()) == {}

    assert destroyed_before_kill < KERNELS
    assert "WorkerLostError" in log or "SIGKILL" in log, log[-3000:]
    (run,) = ledger.list_runs("terminate_sessions")
    assert run.status == RunStatus.SUCCEEDED, run
    assert (run.requested, run.succeeded, run.failed, run.skipped) == (KERNELS, KERNELS, 0, 0)
    items = ledger.items(run.id)
    assert sorted(i.item_id for i in items) == sorted(str(k) for k in kids)
    repo = SchedulerRepository(senv.engine)
    session = repo.get_session(sid)
    assert session.status == SessionStatus.TERMINATED
    assert {k.status for k in session.kernels} == {KernelStatus.TERMINATED}
    senv.engine.dispose()


@pytest.mark.timeout(120)
async def test_sc_rl_008_lost_worker_run_abandoned_by_recovery_and_redone(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-RL-008: Given a whole worker killed mid-batch (its message waits for the broker's
    visibility timeout, far away), when the run passes its deadline, then the recovery task
    marks it abandoned and frees the claim, and the next run destroys what is left."""
    senv = make_env(tmp_path, valkey_url, destroy_concurrency="1", run_deadline="2")
    ledger = RunLedger(senv.engine)
    app = create_app(senv.settings)
    async with agent_process(
        senv.settings.redis_url, agent_id=AGENT, latency={"destroy_kernel": 0.4}
    ) as agents:
        sid, kids = await terminating_session_on_agent(senv, agents.addr())
        with celery_worker(senv, concurrency=1) as worker:
            app.send_task("sokovan.handler.run", kwargs={"handler": "terminate_sessions"})

            async def under_way() -> bool:
                return 0 < len(await agent_kernels(agents.addr())) < KERNELS

            await until(under_way, 60, "the batch to be under way")
            os.killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait(10)
        (lost,) = ledger.list_runs("terminate_sessions")
        assert lost.status == RunStatus.RUNNING

        with celery_worker(senv, concurrency=1):

            async def recovered() -> list[int]:
                reply = app.send_task("sokovan.maintenance.recover")
                result = await asyncio.to_thread(reply.get, timeout=30)
                return list(result["abandoned"])

            # Recovery starts the next run itself: the unfinished targets do not wait a tick.
            assert await until(recovered, 60, "recovery to abandon the run") == [lost.id]

            async def redone() -> bool:
                runs = await asyncio.to_thread(ledger.list_runs, "terminate_sessions")
                return len(runs) == 2 and runs[0].finished_at is not None

            await until(redone, 60, "the next run to finish")
        assert await agent_kernels(agents.addr()) == {}

    abandoned = ledger.get_run(lost.id)
    assert abandoned.status == RunStatus.ABANDONED and abandoned.finished_at is not None
    assert abandoned.note and "abandoned" in abandoned.note
    nxt = ledger.list_runs("terminate_sessions")[0]
    assert nxt.status == RunStatus.SUCCEEDED
    assert (nxt.requested, nxt.succeeded, nxt.failed) == (KERNELS, KERNELS, 0)
    session = SchedulerRepository(senv.engine).get_session(sid)
    assert session.status == SessionStatus.TERMINATED
    assert {k.status for k in session.kernels} == {KernelStatus.TERMINATED}
    assert sorted(i.item_id for i in ledger.items(nxt.id)) == sorted(str(k) for k in kids)
    senv.engine.dispose()
