"""SC-RC-005: a message that kills its worker every time is dead-lettered, not crash-looped."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from sokovan.db.offload import OffloadedStore
from sokovan.deadletter import DeadLetter, DeadLetters
from sokovan.scheduler.transitions import request_termination
from sokovan.types import RunId, RunStatus, SessionStatus
from tests.cluster import IMAGE, Cluster, cluster_without_worker
from tests.placed import kernels_held, place_sessions
from tests.poison import EXIT_CODE, POISON_FILE_ENV
from tests.workers import ROOT, celery_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DESTROY_TASK = "sokovan.agent.destroy_kernels"
TERMINATE = "terminate_sessions"


async def dead_list(c: Cluster) -> list[DeadLetter]:
    redis: Redis = Redis.from_url(c.senv.settings.redis_url)
    try:
        return await DeadLetters(redis).list()
    finally:
        await redis.aclose()


def sokovan_cli(c: Cluster, *args: str) -> str:
    """Runs the `sokovan` command against the test's settings; returns its output."""
    done = subprocess.run(
        [sys.executable, "-c", "from tasks.cli import main; main()", *args],
        cwd=ROOT,
        env={**c.senv.env, "COLUMNS": "400"},  # wide enough that no table cell is cut
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def deliveries(log: str, task_id: str) -> int:
    return len(re.findall(rf"{re.escape(DESTROY_TASK)}\[{task_id}\] received", log))


async def test_poison_batch_is_dead_lettered_recorded_and_the_worker_keeps_serving(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-RC-005: a destroy batch whose body kills the pool process every time.

    Given two RUNNING sessions of three kernels, one on agent a1 and one on a2, and a worker
    in which every destroy batch for a2 makes its pool process exit (os._exit), when both
    are terminated, then the a2 batch is requeued at once after each death (the visibility
    timeout is the default hour), started three times, and on its fourth delivery not run
    but dead-lettered: the run records its three kernels failed with the reason and closes
    `partial`, the a1 batch succeeds, the dead letter names the task, the run and the count,
    `sokovan tasks dead` lists it, the worker's main process never died and it still serves
    (a kernels=10**9 request fails alone with a clear error; a new session runs), and once
    the fault is gone `sokovan tasks dead retry` resends the batch, which destroys the
    kernels on a2 and leaves the list empty."""
    poison = tmp_path / "poison-agent"
    poison.write_text("a2")
    async with cluster_without_worker(tmp_path, valkey_url, agents=2) as c:
        senv = dataclasses.replace(c.senv, env={**c.senv.env, POISON_FILE_ENV: str(poison)})
        placed = await place_sessions(c, [["a1"] * 3, ["a2"] * 3])
        sids = list(placed)
        with celery_worker(senv, concurrency=1, extra_args=["-I", "tests.poison"]) as worker:
            assert set(
                await request_termination(OffloadedStore(c.repo), sids, "USER_REQUESTED")
            ) == set(sids)
            run_id = RunId(c.send("sokovan.handler.run", handler=TERMINATE)["run_id"])
            wait_for(
                lambda: c.ledger.get_run(run_id).status != RunStatus.RUNNING,
                timeout=120,
                what=f"run {run_id} to close",
            )
            run = c.ledger.get_run(run_id)
            assert (run.status, run.succeeded, run.failed) == (RunStatus.PARTIAL, 3, 3), run
            failed = [i for i in c.ledger.items(run_id) if not i.ok]
            assert {i.agent_id for i in failed} == {"a2"}
            assert {i.error for i in failed} == {
                "dead-lettered: delivered 4 times without finishing (max 3)"
            }
            (letter,) = await dead_list(c)
            assert (letter.task_name, letter.run_id, letter.deliveries) == (DESTROY_TASK, run_id, 4)
            assert deliveries(worker.output(), letter.task_id) == 4
            assert worker.output().count(f"exited with 'exitcode {EXIT_CODE}'") == 3
            assert c.session(sids[0]).status == SessionStatus.TERMINATED
            assert c.session(sids[1]).status == SessionStatus.TERMINATING

            listed = sokovan_cli(c, "tasks", "dead")
            assert letter.task_id in listed and DESTROY_TASK in listed and str(run_id) in listed

            refused = c.send("sokovan.session.create", request={"image": IMAGE, "kernels": 10**9})
            assert refused["error"].startswith("kernels: at most"), refused
            fresh = c.create(agents=["a1"])
            assert c.wait_status(fresh, SessionStatus.RUNNING).status == SessionStatus.RUNNING
            assert worker.proc.poll() is None

            poison.unlink()
            assert "as task" in sokovan_cli(c, "tasks", "dead", "retry", letter.task_id)
            async with asyncio.timeout(60):  # the resent batch destroys a2's kernels
                # The agent tells nothing when it is done: poll it.
                while (await kernels_held(c, ["a2"]))["a2"]:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
            assert await dead_list(c) == []
            assert "no dead-lettered" in sokovan_cli(c, "tasks", "dead")
