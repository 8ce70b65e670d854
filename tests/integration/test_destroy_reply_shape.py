"""SC-CV-009: a destroy_kernel answer that is not a destroy reply destroys nothing in our books.

A real Backend.AI agent's destroy_kernel answers None once the kernel is gone (or was gone
already). An extension type, a nested structure or a bomb in its place fails that item with
an error naming the method; the kernel stays TERMINATING, held by its agent, for the next
run, which destroys it and counts it once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sokovan.db.offload import OffloadedStore
from sokovan.scheduler.transitions import request_termination
from sokovan.types import KernelStatus, RunId, RunStatus, SessionStatus
from tests.agents import set_fault
from tests.cluster import Cluster, cluster_without_worker
from tests.placed import kernels_held, place_sessions
from tests.workers import celery_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TERMINATE = "terminate_sessions"
# The wrong answers, as the reference agent's fault modes send them.
WRONG: dict[str, dict[str, Any]] = {
    "extension type": {"op": "frame", "kind": "body_pickle"},
    "nested structure": {"op": "answer", "value": {"destroyed": [[True, {"k": [None]}]]}},
    "wide structure": {"op": "answer", "value": [["x" * 64] * 64] * 64},
    "bomb": {"op": "frame", "kind": "body_deep"},
}


def run_terminate(c: Cluster) -> RunId:
    """One terminate run, waited for until it is closed."""
    run_id = RunId(c.send("sokovan.handler.run", handler=TERMINATE)["run_id"])
    wait_for(
        lambda: c.ledger.get_run(run_id).status != RunStatus.RUNNING,
        timeout=60,
        what=f"run {run_id} closed",
    )
    return run_id


@pytest.mark.parametrize("kind", sorted(WRONG))
async def test_sc_cv_009_a_wrong_destroy_reply_is_not_a_destroy(
    tmp_path: Path, valkey_url: str, kind: str
) -> None:
    """SC-CV-009.

    Given two RUNNING one-kernel sessions on a reference agent whose destroy_kernel answers
    the first kernel with a wrong shape (`kind`), when both are terminated, the run fails
    that item with an error naming destroy_kernel and the expected None, the kernel stays
    TERMINATING and on the agent, and its session is not TERMINATED; the other kernel is
    destroyed. Once the agent answers as a real one does, the next run destroys the first
    kernel; each kernel is
    counted destroyed once."""
    async with cluster_without_worker(tmp_path, valkey_url, agents=1) as c:
        placed = await place_sessions(c, [["a1"], ["a1"]])
        (bad_sid, bad), (good_sid, good) = [(s, next(iter(k))) for s, k in placed.items()]
        op = {**WRONG[kind], "method": "destroy_kernel", "kernels": [str(bad)]}
        await set_fault(c.senv.settings.redis_url, "a1", op)
        await request_termination(OffloadedStore(c.repo), list(placed), "USER_REQUESTED")
        with celery_worker(c.senv, concurrency=1):
            first = run_terminate(c)
            items = {i.item_id: i for i in c.ledger.items(first)}
            assert items[str(good)].ok
            failed = items[str(bad)]
            assert not failed.ok and failed.error is not None
            assert "destroy_kernel" in failed.error, failed.error
            if WRONG[kind]["op"] == "answer":
                assert "expected None" in failed.error, failed.error
            statuses = c.repo.kernel_statuses([bad, good])
            assert statuses == {bad: KernelStatus.TERMINATING, good: KernelStatus.TERMINATED}
            assert c.repo.get_session(bad_sid).status == SessionStatus.TERMINATING
            assert c.repo.get_session(good_sid).status == SessionStatus.TERMINATED
            assert await kernels_held(c, ["a1"]) == {"a1": 1}
            record = c.ledger.get_run(first)
            assert (record.succeeded, record.failed) == (1, 1)

            await set_fault(c.senv.settings.redis_url, "a1", {"op": "clear"})
            # A broken frame also drops the connection and may set the agent aside for its
            # recovery period: later runs try again until the kernel is destroyed.
            runs = [first]

            def destroyed_later() -> bool:
                runs.append(run_terminate(c))
                return c.repo.kernel_statuses([bad]) == {bad: KernelStatus.TERMINATED}

            wait_for(destroyed_later, timeout=90, interval=1.0, what=f"kernel {bad} destroyed")
            assert await kernels_held(c, ["a1"]) == {"a1": 0}
            assert c.repo.get_session(bad_sid).status == SessionStatus.TERMINATED
        destroyed = [i.item_id for run in runs for i in c.ledger.items(run) if i.ok and i.counted]
        assert sorted(destroyed) == sorted([str(bad), str(good)])
