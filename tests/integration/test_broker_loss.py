"""A worker holding an unacknowledged task when Valkey is SIGKILLed stays up and reconnects."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sokovan.types import SessionStatus
from tests.agents import set_fault
from tests.cluster import cluster_without_worker
from tests.outages import RestartableValkey, celery_beat, held_batches
from tests.workers import celery_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KILLS = 4
HANG = 6.0


async def test_valkey_sigkilled_under_a_running_task_does_not_end_the_worker(
    tmp_path: Path,
) -> None:
    """SC-CV-007 (a worker exits on its own): the Redis transport could fail while it closed
    the lost connection, and the worker exited with `Unrecoverable error: AttributeError`.

    Given a worker (2 processes) running an agent call that hangs (so its acks-late message
    is unacknowledged) while its consumer waits on the queue,
    when Valkey is SIGKILLed and started again, four times,
    then the worker process is still the same one, logged no unrecoverable error, and the
    session still reaches RUNNING once the agent answers again."""
    valkey = RestartableValkey(tmp_path / "valkey", append_only=True)
    valkey.start()
    settings = {"agent_call_timeout": "30", "launch_interval": "1"}
    try:
        async with cluster_without_worker(tmp_path, valkey.url, settings=settings) as c:
            with celery_worker(c.senv, concurrency=2) as worker, celery_beat(c.senv):
                for _ in range(KILLS):
                    op = {"op": "hang", "method": "*", "seconds": HANG}
                    for aid in ("a1", "a2"):
                        await set_fault(c.senv.settings.redis_url, aid, op)
                    sid = c.create(timeout=90)
                    wait_for(
                        lambda: held_batches(worker, "check_and_pull", within=HANG),
                        timeout=60,
                        what="a pull the worker is running",
                    )
                    running = set(held_batches(worker, "check_and_pull", within=HANG))
                    valkey.kill(down_for=1.0)
                    # A worker that met the error exits once its running task is done. Only
                    # the pulls running at the kill count: a message the lost connection had
                    # fetched but not started comes back after the visibility timeout.
                    wait_for(
                        lambda held=running: not held & set(held_batches(worker, "check_and_pull")),
                        timeout=60,
                        what="the pull to end",
                    )
                    await asyncio.sleep(2.0)
                    assert worker.proc.poll() is None, worker.output()[-4000:]
                    assert "Unrecoverable error" not in worker.output(), worker.output()[-4000:]
                    for aid in ("a1", "a2"):
                        await set_fault(c.senv.settings.redis_url, aid, {"op": "clear"})
                    c.wait_status(sid, SessionStatus.RUNNING, timeout=120)
    finally:
        if valkey._server is not None:
            valkey._server.stop()
