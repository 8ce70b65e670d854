"""SC-RC-006: Valkey restarts for a few seconds between beat ticks; nothing fails."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sokovan.bootstrap import build_redis
from sokovan.config import load_settings
from sokovan.redis_retry import retry_window
from sokovan.types import RunStatus, SessionStatus
from tests.cluster import Cluster, cluster_without_worker
from tests.outages import celery_beat, restartable_valkey, tracebacks
from tests.workers import celery_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SWEEP = "sweep_stale_kernels"
# Every handler ticks each second, and idle ticks keep their run row, so the ledger shows
# every tick that ran around the restart.
SETTINGS = {
    "sweep_interval": "1",
    "terminate_interval": "1",
    "launch_interval": "1",
    "recover_interval": "2",
    "record_empty_beat_runs": "true",
}
DOWN_FOR = 5.0


def sweep_runs_after(c: Cluster, run_id: int) -> list[RunStatus]:
    return [r.status for r in c.ledger.list_runs(SWEEP, limit=200) if r.id > run_id]


async def test_valkey_restart_between_beat_ticks_fails_no_run(tmp_path: Path) -> None:
    """SC-RC-006: a Valkey restart of 5 s costs no failed run and prints no traceback.

    Given a worker, beat ticking every handler each second, two reference agents and one
    RUNNING session, all on a Valkey of the test's own,
    when Valkey stops (saving its data, as a server with persistence does) and comes back
    5 s later on the same port and data dir,
    then every run in the ledger succeeded, beat ticks run again after the restart, a manual
    sweep right after it succeeds and kills nothing, the session still terminates normally,
    and no process printed a traceback."""
    with restartable_valkey(tmp_path / "valkey") as valkey:
        async with cluster_without_worker(tmp_path, valkey.url, settings=SETTINGS) as c:
            with celery_worker(c.senv, concurrency=2) as worker, celery_beat(c.senv) as beat:
                sid = c.create()
                assert c.wait_status(sid, SessionStatus.RUNNING).status == SessionStatus.RUNNING
                wait_for(lambda: len(sweep_runs_after(c, 0)) >= 3, timeout=60, what="3 sweeps")
                before = c.ledger.list_runs(limit=1)[0].id

                valkey.restart(down_for=DOWN_FOR)

                wait_for(
                    lambda: sweep_runs_after(c, before).count(RunStatus.SUCCEEDED) >= 3,
                    timeout=90,
                    what="3 beat sweeps after the restart",
                )
                manual = c.send("sokovan.handler.run", handler=SWEEP, trigger="manual")
                assert manual["status"] == str(RunStatus.SUCCEEDED), manual
                assert c.session(sid).status == SessionStatus.RUNNING
                answer = c.send("sokovan.session.terminate", session_id=str(sid))
                assert answer["terminating"] is True, answer
                c.wait_status(sid, SessionStatus.TERMINATED)
                wait_for(lambda: not c.ledger.running(), timeout=30, what="runs closed")
            runs = c.ledger.list_runs(limit=1000)
            assert len([r for r in runs if r.id > before]) >= 4
            bad = [(r.id, r.handler, r.status, r.error) for r in runs if r.status != "succeeded"]
            assert bad == []
            assert "raised unexpected" not in worker.output(), "a task failed"
            assert tracebacks(worker.output(), beat.output(), c.agents.log_tail(10_000)) == []


async def test_redis_call_waits_for_a_restarting_server(tmp_path: Path) -> None:
    """SC-RC-006: a Redis call made while Valkey is down returns once it is back.

    The clients of the scheduler (build_redis) and of the reference agent share the retry
    options: reconnects with exponential backoff for about 11 s, so the call that meets the
    outage waits for the server instead of failing."""
    with restartable_valkey(tmp_path / "valkey") as valkey:
        settings = load_settings({"SOKOVAN_REDIS_URL": valkey.url}, dotenv=None)
        client = build_redis(settings)
        try:
            await client.set("k", "v")
            valkey.stop()
            restart = threading.Timer(2.0, valkey.start)
            restart.start()
            assert await client.get("k") == b"v"
            restart.join()
        finally:
            await client.aclose()
    assert retry_window() > 2 * DOWN_FOR
