"""A SIGTERM'd worker (soft shutdown, as the Procfile runs it) hands its batch back at once."""

from __future__ import annotations

import dataclasses
import re
import signal
import subprocess
from pathlib import Path

import pytest

from sokovan.types import KernelStatus, RunId, RunStatus, SessionStatus
from tests.agents import set_fault
from tests.cluster import Cluster, cluster_without_worker
from tests.workers import SchedulerEnv, WorkerProcess, celery_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DESTROY_TASK = "sokovan.agent.destroy_kernels"
SOFT_TIMEOUT = 2.0
# Far beyond the soft timeout: the batch cannot finish before the worker gives it back.
HANG = 60.0


def soft_env(senv: SchedulerEnv) -> SchedulerEnv:
    """The worker's environment as the Procfile sets it: SIGTERM is a soft shutdown."""
    return dataclasses.replace(senv, env={**senv.env, "REMAP_SIGTERM": "SIGQUIT"})


def destroy_in_flight(c: Cluster, worker: WorkerProcess) -> bool:
    replies = c.app.control.inspect(destination=[worker.name], timeout=1.0).active() or {}
    return any(t.get("name") == DESTROY_TASK for tasks in replies.values() for t in tasks)


def received(log: str) -> list[str]:
    return re.findall(rf"{re.escape(DESTROY_TASK)}\[([0-9a-f-]+)\] received", log)


async def test_sigterm_soft_shutdown_requeues_the_unfinished_batch_at_once(
    tmp_path: Path, valkey_url: str
) -> None:
    """Given a worker run as the Procfile runs it (REMAP_SIGTERM=SIGQUIT, soft shutdown of
    2 s) whose destroy batch hangs on its agent, when SIGTERM reaches the worker, it exits
    soon after the soft timeout and the batch's message is back in the queue at once (the
    visibility timeout is the default hour); the next worker destroys the kernel and the
    run counts it once."""
    settings = {"soft_shutdown_timeout": str(SOFT_TIMEOUT)}
    async with cluster_without_worker(tmp_path, valkey_url, settings=settings) as c:
        senv = soft_env(c.senv)
        url = c.senv.settings.redis_url
        with celery_worker(senv, concurrency=1) as first:
            sid = c.create(agents=["a1"])
            assert c.wait_status(sid, SessionStatus.RUNNING).status == SessionStatus.RUNNING
            await set_fault(url, "a1", {"op": "hang", "method": "destroy_kernel", "seconds": HANG})
            answer = c.send("sokovan.session.terminate", session_id=str(sid))
            run_id = RunId(answer["run_id"])
            wait_for(lambda: destroy_in_flight(c, first), timeout=30, what="destroy in flight")
            first.proc.send_signal(signal.SIGTERM)
            try:
                first.proc.wait(SOFT_TIMEOUT + 30)
            except subprocess.TimeoutExpired:
                pytest.fail(f"worker did not stop:\n{first.output()[-3000:]}")
        assert "Initiating Soft Shutdown" in first.output(), first.output()[-3000:]
        (held,) = received(first.output())
        assert f"[{held}] succeeded" not in first.output(), "it did not wait for the batch"
        assert c.ledger.get_run(run_id).status == RunStatus.RUNNING
        await set_fault(url, "a1", {"op": "clear"})
        with celery_worker(senv, concurrency=1) as second:
            wait_for(
                lambda: c.ledger.get_run(run_id).status != RunStatus.RUNNING,
                timeout=60,
                what="the run to finish on the next worker",
            )
            assert received(second.output()) == [held], "the same batch was handed back"
        run = c.ledger.get_run(run_id)
        assert (run.status, run.succeeded, run.failed) == (RunStatus.SUCCEEDED, 1, 0), (
            c.ledger.items(run_id)
        )
        s = c.wait_status(sid, SessionStatus.TERMINATED)
        assert [k.status for k in s.kernels] == [KernelStatus.TERMINATED]
