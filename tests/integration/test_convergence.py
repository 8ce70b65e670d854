"""Convergence: after a fault, each state ends on its own, not at a deadline meant for
something else (SC-CV-001, SC-CV-003)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from sokovan.db.repository import AgentRow
from sokovan.types import AgentId, KernelStatus, ResourceSlot, RunStatus, SessionStatus
from tests.cluster import cluster_without_worker, kernel_rows, running_cluster
from tests.conftest import free_port
from tests.outages import celery_beat, held_batches
from tests.placed import submit_on
from tests.workers import celery_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PULL = "pull_images"
TERMINATE = "terminate_sessions"


async def test_sc_cv_001_pull_lost_to_a_worker_crash(tmp_path: Path, valkey_url: str) -> None:
    """SC-CV-001: the whole worker tree is SIGKILLed just after it takes a check_and_pull
    batch and is restarted: the abandoned run's session is pulled again by the next run
    without waiting for the PULLING deadline (an hour here), reaches RUNNING, and the lost
    pull used none of its attempts."""
    settings = {"pulling_deadline": "3600"}
    async with cluster_without_worker(
        tmp_path, valkey_url, agents=1, settings=settings, latency={"check_and_pull": 3.0}
    ) as c:
        sid = submit_on(c, "a1")
        with celery_worker(c.senv, concurrency=2) as doomed:
            c.send("sokovan.handler.run", handler=PULL)
            wait_for(
                lambda: held_batches(doomed, "check_and_pull", within=2.0),
                timeout=60,
                interval=0.05,
                what="the worker holding a check_and_pull batch",
            )
            os.killpg(doomed.proc.pid, signal.SIGKILL)
            doomed.proc.wait(10)
        assert c.session(sid).status == SessionStatus.PULLING

        with celery_worker(c.senv, concurrency=2), celery_beat(c.senv):
            c.wait_status(sid, SessionStatus.RUNNING, timeout=150)

        runs = c.ledger.list_runs(PULL)
        assert any(r.status == RunStatus.ABANDONED for r in runs), runs
        assert not c.repo.session_status_data(sid).get("pull_attempts")


async def test_sc_cv_003_kernel_never_created_is_ended_without_a_destroy(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-CV-003: a session placed on an agent where nothing listens fails its pull and goes
    TERMINATING; its kernel was never sent to create_kernels, so the next terminate tick
    ends it with no destroy call: TERMINATED long before the 300 s TERMINATING deadline,
    the kernel CANCELLED, and its outcome saying it was never created. (A kernel whose
    create was sent but never answered is still destroyed: SC-DL-004.)"""
    settings = {
        "pull_attempts": "1",
        "agent_call_timeout": "1",
        "agent_failure_threshold": "100",
        "terminate_interval": "1",
        "launch_interval": "1",
    }
    async with running_cluster(
        tmp_path, valkey_url, runtime="sim", settings=settings, beat=True
    ) as c:
        ghost = AgentId("ghost")
        c.repo.upsert_agent(
            AgentRow(
                id=ghost,
                rpc_addr=f"tcp://127.0.0.1:{free_port()}",
                capacity=ResourceSlot.from_json({"cpu": "4", "mem": "8589934592"}),
            )
        )
        sid = c.create(name="never-created", agents=[str(ghost)])

        s = c.wait_status(sid, SessionStatus.TERMINATED, timeout=90)

        [kernel] = s.kernels
        assert kernel_rows(c.senv, [kernel.id])[str(kernel.id)][0] == str(KernelStatus.CANCELLED)
        items = [
            i
            for run in c.ledger.list_runs(TERMINATE)
            for i in c.ledger.items(run.id)
            if i.item_id == str(kernel.id)
        ]
        assert [i.evidence["verdict"] for i in items] == ["never_created"], items
        assert items[0].ok and "never sent" in str(items[0].evidence["never_created"])
