"""SC-OP-009 status from live signals, SC-OP-010 handler task names and quiet stale ticks, and
`runs show` keeping every column with long errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from beat_schedule import beat_schedule
from sokovan import constants as C
from sokovan.db.ledger import RunLedger
from sokovan.scheduler.handlers import handler_names
from sokovan.types import ItemOutcome, RunTrigger
from tasks import names
from tasks.app import create_app
from tests.workers import SchedulerEnv, celery_beat, celery_worker, make_env, wait_for

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def sokovan(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "sokovan"), *args], env=env, capture_output=True, text=True, timeout=90
    )


def status(senv: SchedulerEnv) -> dict[str, Any]:
    done = sokovan(["status", "--json"], senv.env)
    assert "Traceback" not in done.stderr, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def agent_counts(env: dict[str, str]) -> dict[str, int]:
    """Agents per status as `agents list --json` lists them."""
    listed = json.loads(sokovan(["agents", "list", "--json"], env).stdout)["agents"]
    counts: dict[str, int] = {}
    for a in listed:
        counts[a["status"]] = counts.get(a["status"], 0) + 1
    return counts


def test_sc_op_009_status_tells_the_truth(tmp_path: Path, valkey_url: str) -> None:
    """SC-OP-009: Given a worker and beat, `status` says both are up from their live signals
    (ping, beat's heartbeat key); when they stop it says DOWN at once, never judged by a
    file's age. The agents line counts what `agents list` lists."""
    senv = make_env(tmp_path, valkey_url)
    env = senv.env
    registered = sokovan(["agents", "register", "n1", "--rpc-addr", "tcp://127.0.0.1:1"], env)
    assert registered.returncode == 0, registered.stderr
    first = status(senv)
    assert first["database"]["agents"] == agent_counts(env) == {"ALIVE": 1}
    assert first["workers"] == [] and first["beat"]["running"] is False
    # A schedule file written just now is no sign of a running beat.
    (senv.var_dir / "celerybeat-schedule").write_bytes(b"")
    assert status(senv)["beat"]["running"] is False
    with celery_worker(senv) as worker, celery_beat(senv):
        wait_for(lambda: status(senv)["beat"]["running"], timeout=60)
        doc = status(senv)
        assert worker.name in doc["workers"]
        assert doc["beat"]["heartbeat_age"] < C.BEAT_HEARTBEAT_TTL_SEC
        assert set(doc["beat"]) >= {"running", "schedule_age"}  # the README's fields stay
        assert sum(doc["database"]["agents"].values()) == 1  # statuses move: checks run
        client = redis.Redis.from_url(senv.settings.redis_url)
        assert client.exists(C.WORKER_HEARTBEAT_KEY_PREFIX + worker.name)
    after = status(senv)
    assert after["workers"] == [] and after["beat"]["running"] is False, after
    text = sokovan(["status"], env).stdout
    assert "beat:      DOWN" in text and "workers:   DOWN" in text, text


def test_sc_op_010_handler_runs_have_their_own_task_names(tmp_path: Path, valkey_url: str) -> None:
    """SC-OP-010: every declared handler is a task `sokovan.handler.<name>` (beat sends those);
    `sokovan.handler.run` with `handler=` still works; a stale tick is dropped as a SUCCESS
    with a note, never REVOKED; a fresh one runs."""
    senv = make_env(tmp_path, valkey_url)
    schedule = beat_schedule(senv.settings)
    for name in handler_names():
        assert any(e["task"] == names.handler_task(name) for e in schedule.values()), name
    assert all("expires" not in e["options"] for e in schedule.values())
    app = create_app(senv.settings)
    try:
        with celery_worker(senv):
            own = app.send_task(names.handler_task("sweep_stale_kernels"), kwargs={})
            answer = own.get(timeout=60)
            assert answer["handler"] == "sweep_stale_kernels" and answer["run_id"], answer
            old = app.send_task(names.HANDLER_RUN, kwargs={"handler": "check_agents"})
            assert old.get(timeout=60)["handler"] == "check_agents"
            other = app.send_task(
                names.handler_task("sweep_stale_kernels"), kwargs={"handler": "check_agents"}
            )
            assert other.get(timeout=60)["field"] == "handler"
            stale_headers = {C.TICK_AT_HEADER: time.time() - 120, C.TICK_EVERY_HEADER: 5.0}
            stale = app.send_task(
                names.handler_task("check_agents"),
                kwargs={"trigger": "beat"},
                headers=stale_headers,
            )
            assert stale.get(timeout=60)["dropped"] is True
            assert stale.state == "SUCCESS"
            fresh_headers = {C.TICK_AT_HEADER: time.time(), C.TICK_EVERY_HEADER: 60.0}
            fresh = app.send_task(
                names.handler_task("check_agents"),
                kwargs={"trigger": "beat"},
                headers=fresh_headers,
            )
            assert fresh.get(timeout=60)["handler"] == "check_agents"
    finally:
        app.close()


def test_runs_show_keeps_every_column_with_a_long_error(tmp_path: Path) -> None:
    """`runs show` with a 400-character error keeps AGENT, RESULT, TOOK, EVIDENCE and the whole
    item id on the item's first line; the error wraps in its own column."""
    var = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOKOVAN_")}
    env.update(SOKOVAN_VAR_DIR=str(var), SOKOVAN_REDIS_URL="redis://127.0.0.1:1/0")
    env["SOKOVAN_EMBEDDED_VALKEY"] = "false"
    assert sokovan(["db", "upgrade"], env).returncode == 0
    from sokovan.db.engine import create_engine

    ledger = RunLedger(create_engine(f"sqlite:///{var / 'sokovan.db'}"))
    run = ledger.open_run("terminate_sessions", RunTrigger.API)
    item = str(uuid.uuid4())
    error = "AgentRemoteError: " + "the agent said no " * 22
    detail = {"occupied_slots": {"cpu": "1"}}
    ledger.record_items(run, [ItemOutcome(item, "agent-a1", ok=False, error=error, detail=detail)])
    ledger.close_run(run)
    done = sokovan(["runs", "show", str(run)], env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("ITEM"))
    for column in ("AGENT", "RESULT", "TOOK", "ERROR", "EVIDENCE"):
        assert column in header, header
    first = next(line for line in lines if line.startswith(item))
    assert "agent-a1" in first and "FAIL" in first and "occupied_slots" in first, first
    assert max(len(line) for line in lines) < 250
    shown = " ".join(" ".join(line.split()) for line in lines)
    assert "the agent said no" in shown
