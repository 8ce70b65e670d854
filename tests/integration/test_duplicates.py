"""SC-RC-007: the same pull, create, destroy and chord-body message delivered twice."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from sokovan.db.offload import OffloadedStore
from sokovan.db.stats import RunStats
from sokovan.scheduler.transitions import request_termination
from sokovan.types import RunStatus, SessionId, SessionStatus
from tests.agents import set_fault
from tests.cluster import Cluster, cluster_without_worker
from tests.placed import submit_on
from tests.workers import celery_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

QUEUE = "sokovan"
AGENTS = ("a1", "a2")
# a1's batch holds the one worker process this long: time to queue a copy of a2's batch,
# and below the tests' agent call timeout (5 s), so the call still succeeds.
HANG = {"op": "hang", "seconds": 3.5}
NOTICED = "is a duplicate of a finished task"


def queued(c: Cluster, task: str) -> list[bytes | str]:
    """Messages of `task` waiting in the queue."""
    client = sync_redis.Redis.from_url(c.senv.settings.redis_url)
    try:
        raw = client.lrange(QUEUE, 0, -1)
    finally:
        client.close()
    found = []
    for message in raw:
        headers = json.loads(message)["headers"]
        if headers["task"] == task:
            found.append(message)
    return found


def duplicate(c: Cluster, message: bytes | str) -> str:
    """Queues a second copy of a message (same task id), as a broker redelivery does."""
    copy = json.loads(message)
    copy["properties"]["delivery_tag"] = str(uuid.uuid4())
    client = sync_redis.Redis.from_url(c.senv.settings.redis_url)
    try:
        client.lpush(QUEUE, json.dumps(copy))
    finally:
        client.close()
    return str(copy["headers"]["id"])


async def duplicate_while_held(c: Cluster, task: str, method: str) -> str:
    """While one agent's batch of `task` hangs in its agent (holding the one worker process),
    queues a copy of the other agent's batch, waiting behind it; then lifts the hang."""
    # Both batches are queued at first; a slow worker takes its one a moment later.
    seen: list[Any] = []

    def one_queued() -> bool:
        # Kept from the same read: a second look could find the next tick's batch queued too.
        seen[:] = queued(c, task)
        return len(seen) == 1

    wait_for(one_queued, timeout=30, interval=0.05, what=f"one queued {task}")
    (message,) = seen
    task_id = duplicate(c, message)
    for agent_id in AGENTS:
        await set_fault(c.senv.settings.redis_url, agent_id, {"op": "clear", "method": method})
    return task_id


def created_on_agents(c: Cluster) -> list[str]:
    return re.findall(r"created kernel ([0-9a-f-]+)", c.agents.log_tail(100_000))


async def test_sc_rc_007_duplicate_pull_create_destroy_and_body_are_harmless_and_noticed(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-RC-007: given two sessions, one on a1 and one on a2, and one worker process, when
    one agent's check_and_pull, create_kernels and destroy_kernels messages are delivered
    twice (a copy with the same task id queued while the other's batch holds the worker) and the
    terminate run's chord body is delivered again after it ran, then both sessions go
    through RUNNING to TERMINATED, each kernel is created once on its agent, each run
    counts each kernel once, the per-session counts are one created and one destroyed,
    and the worker log notes every duplicate."""
    async with cluster_without_worker(tmp_path, valkey_url, agents=2) as c:
        url = c.senv.settings.redis_url
        for method in ("check_and_pull", "create_kernels", "destroy_kernel"):
            for agent_id in AGENTS:
                await set_fault(url, agent_id, {**HANG, "method": method})
        sids = [submit_on(c, a) for a in ("a1", "a2")]
        dups: list[str] = []
        with celery_worker(c.senv, concurrency=1) as worker:
            c.app.send_task("sokovan.handler.run", kwargs={"handler": "pull_images"})
            dups.append(
                await duplicate_while_held(c, "sokovan.agent.check_and_pull", "check_and_pull")
            )
            dups.append(
                await duplicate_while_held(c, "sokovan.agent.create_kernels", "create_kernels")
            )
            for sid in sids:
                c.wait_status(SessionId(sid), SessionStatus.RUNNING)
            await request_termination(OffloadedStore(c.repo), sids, "USER_REQUESTED")
            c.app.send_task("sokovan.handler.run", kwargs={"handler": "terminate_sessions"})
            dups.append(
                await duplicate_while_held(c, "sokovan.agent.destroy_kernels", "destroy_kernel")
            )
            for sid in sids:
                c.wait_status(SessionId(sid), SessionStatus.TERMINATED)
            wait_for(lambda: not c.ledger.running(), timeout=30, what="runs closed")
            (terminate,) = c.ledger.list_runs("terminate_sessions", limit=10)
            body_id = terminate.fanout_id
            assert body_id
            results = [[o.to_json() for o in c.ledger.outcomes(terminate.id)]]
            c.app.send_task(
                "sokovan.run.complete",
                args=[results],
                kwargs={"run_id": terminate.id, "operation": "destroy_kernels", "skipped": []},
                task_id=body_id,
            ).get(timeout=30)
            dups.append(body_id)
            for task_id in dups:
                wait_for(
                    lambda t=task_id: f"[{t}] {NOTICED}" in worker.output(),
                    timeout=30,
                    what=f"the duplicate {task_id} noticed",
                )
        kernels = [str(k.id) for sid in sids for k in c.session(SessionId(sid)).kernels]
        assert sorted(created_on_agents(c)) == sorted(kernels), "a kernel was created twice"
        for handler in ("pull_images", "start_sessions", "terminate_sessions"):
            runs = c.ledger.list_runs(handler, limit=10)
            assert [(r.status, r.succeeded, r.failed) for r in runs] == [
                (RunStatus.SUCCEEDED, 2, 0)
            ], handler
        stats = RunStats(c.senv.engine).sessions([str(s) for s in sids])
        assert [(s.created, s.destroyed, s.failed) for s in stats] == [(1, 1, 0), (1, 1, 0)]
