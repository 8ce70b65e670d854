"""Convergence: after a fault, each state ends on its own, not at a deadline meant for
something else (SC-CV-001, SC-CV-003)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from sokovan.types import (
    TERMINAL_SESSION_STATUSES,
    KernelStatus,
    RunStatus,
    SessionStatus,
)
from tests.cluster import cluster_without_worker, ghost_agent, kernel_rows, running_cluster
from tests.outages import celery_beat, held_batches, restartable_valkey
from tests.placed import kernels_held, submit_on
from tests.workers import celery_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PULL = "pull_images"
DONE = (SessionStatus.RUNNING, *TERMINAL_SESSION_STATUSES)
AGENTS = ["a1", "a2", "a3"]
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


async def test_sc_cv_002_create_lost_to_a_broker_restart(tmp_path: Path) -> None:
    """SC-CV-002: Valkey dies without saving while create_kernels batches are held (queued
    messages, claims and chord counters gone) and comes back empty: every session ends
    RUNNING, or failed with a reason, without waiting for the CREATING deadline (an hour
    here); no kernel is created twice on the agent, and the agent ends up holding exactly
    the RUNNING sessions' kernels. (A create lost with a SIGKILLed worker: SC-RC-001.)"""
    settings = {"creating_deadline": "3600", "launch_interval": "1", "terminate_interval": "1"}
    with restartable_valkey(tmp_path / "valkey") as valkey:
        async with cluster_without_worker(
            tmp_path, valkey.url, agents=3, settings=settings, latency={"create_kernels": 3.0}
        ) as c:
            sids = [submit_on(c, agent) for agent in AGENTS for _ in range(2)]
            # One process: one agent's batch is held, the others wait in the broker's queue.
            with celery_worker(c.senv, concurrency=1) as worker, celery_beat(c.senv):
                wait_for(
                    lambda: held_batches(worker, "create_kernels", within=2.0),
                    timeout=90,
                    interval=0.05,
                    what="the worker holding a create_kernels batch",
                )
                valkey.lose_everything(down_for=1.0)
                wait_for(
                    lambda: (
                        all(s.status in DONE for s in c.repo.sessions_by_ids(sids))
                        and not c.ledger.running("start_sessions")
                    ),
                    timeout=150,
                    interval=0.5,
                    what="every session RUNNING or finished, and no create run left open",
                )
                sessions = c.repo.sessions_by_ids(sids)
                running = {k.id for s in sessions if s.status == SessionStatus.RUNNING
                           for k in s.kernels}  # fmt: skip
                for s in sessions:
                    if s.status != SessionStatus.RUNNING:
                        assert c.repo.session_status_data(s.id).get("error"), s.id
                created = Counter(
                    re.findall(r"created kernel ([0-9a-f-]+)", c.agents.log_tail(1_000_000))
                )
                assert all(n == 1 for n in created.values()), created
                lost = [
                    r
                    for r in c.ledger.list_runs("start_sessions")
                    if r.status == RunStatus.ABANDONED
                ]
                assert lost, "the create run whose messages were lost was never abandoned"
                async with asyncio.timeout(90):  # the failed sessions' kernels are destroyed
                    while sum((await kernels_held(c, AGENTS)).values()) != len(running):  # noqa: ASYNC110
                        await asyncio.sleep(0.5)


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
        ghost = ghost_agent(c)
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


async def test_sc_cv_003_terminated_while_its_create_is_in_flight(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-CV-003, a create still in flight: a session is terminated while its agent is still
    creating its kernel (3 s per create_kernels), so the destroy finds nothing and the kernel
    ends TERMINATED before the agent creates it. The kernel's slots stay held while its
    container may exist (checked all along: whenever the agent holds it, SQL held its slots
    just before), the create task that sees its kernel ended has the container destroyed at
    once, not at the next reconcile tick, and then the slots are free."""
    settings = {"terminate_interval": "1", "launch_interval": "1"}
    async with running_cluster(
        tmp_path,
        valkey_url,
        agents=1,
        settings=settings,
        beat=True,
        latency={"create_kernels": 3.0},
    ) as c:
        sid = c.create(name="ended-while-created")
        c.wait_status(sid, SessionStatus.CREATING, timeout=60)
        await asyncio.sleep(0.5)  # create_kernels was sent: the agent is inside its 3 s create
        c.send("sokovan.session.terminate", session_id=str(sid))
        s = c.wait_status(sid, SessionStatus.TERMINATED, timeout=30)
        [kernel] = s.kernels
        unheld: list[float] = []
        created: list[str] = []
        async with asyncio.timeout(30):
            # The create lands about 2.5 s after the destroy; then it is destroyed again.
            while True:
                held_in_sql = "a1" in c.repo.occupied_by_agent_grouped()
                on_agent = (await kernels_held(c, ["a1"]))["a1"]
                if on_agent and not held_in_sql:
                    unheld.append(time.monotonic())
                created = re.findall(r"created kernel ([0-9a-f-]+)", c.agents.log_tail(10**6))
                if created and not on_agent:
                    break
                await asyncio.sleep(0.1)
        assert created == [str(kernel.id)]
        assert unheld == [], "the agent ran the kernel while SQL held no slots for it"
        assert c.session(sid).status == SessionStatus.TERMINATED
        wait_for(
            lambda: "a1" not in c.repo.occupied_by_agent_grouped(),
            timeout=10,
            what="the slots freed once the container is gone",
        )
        [leftover] = c.repo.leftovers([kernel.id])
        assert leftover.reason == "CREATED_AFTER_END" and leftover.destroyed_at is not None
