"""SC-WS-009: a prefork worker shuts down with cached agent connections and a task in flight."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sokovan.types import KernelStatus, RunId, RunStatus, SessionId, SessionStatus
from tests.agents import RpcClient, set_fault
from tests.cluster import (
    Cluster,
    agent_connections,
    cluster_without_worker,
    connections_to,
    pool_children,
    rpc_ports,
)
from tests.workers import WorkerProcess, celery_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DESTROY_TASK = "sokovan.agent.destroy_kernels"
# Long enough to be sure the signal lands while the agent still holds the call.
HANG = 4.0


def destroy_in_flight(c: Cluster, worker: WorkerProcess) -> bool:
    """Whether the worker reports a destroy batch among its active tasks."""
    replies = c.app.control.inspect(destination=[worker.name], timeout=1.0).active() or {}
    return any(t.get("name") == DESTROY_TASK for tasks in replies.values() for t in tasks)


def task_ids(log: str, event: str) -> list[str]:
    """Ids of destroy batches the worker log shows `received` or `succeeded`."""
    return re.findall(rf"{re.escape(DESTROY_TASK)}\[([0-9a-f-]+)\] {event}", log)


async def running_on(c: Cluster, agent_id: str) -> SessionId:
    sid = c.create(agents=[agent_id])
    s = c.wait_status(
        sid, SessionStatus.RUNNING, SessionStatus.TERMINATING, SessionStatus.TERMINATED
    )
    assert s.status == SessionStatus.RUNNING, c.repo.session_status_data(sid)
    return sid


async def exists_on_agent(c: Cluster, agent_id: str, kernel_id: Any) -> bool:
    async with RpcClient(c.agents.addr(agent_id), agent_id) as rpc:
        return bool(await rpc.call("check_running", str(kernel_id)))


def terminate_with_hang(c: Cluster, worker: WorkerProcess, sid: SessionId) -> RunId:
    """Requests termination and returns once the destroy batch is running on the worker."""
    answer = c.send("sokovan.session.terminate", session_id=str(sid))
    assert answer["terminating"] is True, answer
    wait_for(lambda: destroy_in_flight(c, worker), timeout=30, what="destroy batch in flight")
    return RunId(answer["run_id"])


def assert_terminated_once(c: Cluster, run_id: RunId, sid: SessionId) -> None:
    wait_for(
        lambda: c.ledger.get_run(run_id).status != RunStatus.RUNNING,
        timeout=60,
        what=f"run {run_id} to finish",
    )
    run = c.ledger.get_run(run_id)
    assert (run.status, run.succeeded, run.failed) == (RunStatus.SUCCEEDED, 1, 0), run
    s = c.wait_status(sid, SessionStatus.TERMINATED)
    assert [k.status for k in s.kernels] == [KernelStatus.TERMINATED]


def assert_connected_to_both(c: Cluster, worker: WorkerProcess) -> None:
    """The worker's one pool process holds a connection to each agent, and each agent sees it."""
    ports = rpc_ports(c.agents)
    children = pool_children(worker.proc.pid)
    assert len(children) == 1
    from_worker = connections_to(children, ports.values())
    assert all(from_worker[p] >= 1 for p in ports.values()), from_worker
    assert all(n >= 1 for n in agent_connections(c.agents).values())


def sigterm_group(worker: WorkerProcess) -> None:
    """SIGTERM to the worker's whole process group, as a service manager may send it."""
    os.killpg(worker.proc.pid, signal.SIGTERM)
    try:
        worker.proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker ignored SIGTERM:\n{worker.output()[-3000:]}")


async def test_sigterm_closes_both_agent_connections_and_loses_no_task(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-WS-009: real shutdown of a prefork worker (one pool process).

    Given a worker whose pool process has talked to agents a1 and a2 (it launched one
    session on each), so it holds one cached connection to each,
    when SIGTERM reaches the worker's main process while a destroy batch hangs on a2
    (warm shutdown), the batch finishes first, the pool process closes both cached
    clients (its log says so), and both agents see their connections closed; the chord
    body left in the queue is run by the next worker, so the run completes.
    When SIGTERM reaches the whole process group instead (the pool process dies
    mid-task), the acks-late destroy batch is redelivered to the next worker and the
    run completes with the kernel counted once."""
    settings = {"visibility_timeout": "30"}
    async with cluster_without_worker(tmp_path, valkey_url, settings=settings) as c:
        url = c.senv.settings.redis_url
        with celery_worker(c.senv, concurrency=1) as w1:
            s1 = await running_on(c, "a1")
            s2 = await running_on(c, "a2")
            assert_connected_to_both(c, w1)
            await set_fault(url, "a2", {"op": "hang", "method": "destroy_kernel", "seconds": HANG})
            run2 = terminate_with_hang(c, w1, s2)
            w1.proc.send_signal(signal.SIGTERM)
            assert w1.proc.wait(60) == 0
        log = w1.output()
        assert "closed 2 cached agent clients" in log, log[-3000:]
        (warm,) = task_ids(log, "received")
        assert task_ids(log, "succeeded") == [warm], "warm shutdown let the batch finish"
        wait_for(
            lambda: sum(agent_connections(c.agents).values()) == 0,
            timeout=30,
            what="both agents to see their connections closed",
        )
        assert not await exists_on_agent(c, "a2", c.session(s2).kernels[0].id)
        assert c.ledger.get_run(run2).status == RunStatus.RUNNING  # its chord body is queued

        await set_fault(url, "a2", {"op": "clear"})
        await set_fault(url, "a1", {"op": "hang", "method": "destroy_kernel", "seconds": HANG})
        with celery_worker(c.senv, concurrency=1) as w2:
            assert_terminated_once(c, run2, s2)
            run1 = terminate_with_hang(c, w2, s1)
            sigterm_group(w2)
        await set_fault(url, "a1", {"op": "clear"})
        assert c.ledger.get_run(run1).status == RunStatus.RUNNING
        (lost,) = task_ids(w2.output(), "received")
        assert task_ids(w2.output(), "succeeded") == []
        assert "WorkerLostError" in w2.output()
        with celery_worker(c.senv, concurrency=1) as w3:
            assert_terminated_once(c, run1, s1)
            assert task_ids(w3.output(), "succeeded") == [lost], "the lost batch was redelivered"
        assert not await exists_on_agent(c, "a1", c.session(s1).kernels[0].id)
