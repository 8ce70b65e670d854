"""SC-OP-011: a manager with only Celery installed follows sessions by the documented names."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from tests.cluster import IMAGE, running_cluster
from tests.services import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420), pytest.mark.xdist_group("manager")]
SCRIPT = Path(__file__).with_name("manager_script.py")


async def test_sc_op_011_manager_with_celery_only_follows_sessions(
    tmp_path: Path, valkey_url: str, manager_python: Path
) -> None:
    """SC-OP-011: create, follow to RUNNING, terminate, follow to TERMINATED, read the run;
    then three sessions created and ended by the batch tasks, an unknown id refused alone.

    Given a worker, beat and two reference agents (process kernels),
    when a script in a venv holding only `celery[redis]` drives them by the documented task
    names, queue `sokovan` and status stream, then it sees the session RUNNING and then
    TERMINATED on the stream and by `sokovan.session.get`, reads the terminate run's counts
    by `sokovan.run.get`, gets refusals as `{"error", "kind", "field"}` results, and a
    pickled message answers with a FAILURE result instead of silence."""
    async with running_cluster(tmp_path, valkey_url, runtime="process", beat=True) as c:
        env = {**c.senv.env, "IMAGE": IMAGE}
        env.pop("PYTHONPATH", None)
        done = await asyncio.to_thread(
            subprocess.run,
            [str(manager_python), str(SCRIPT)], env=env, cwd=tmp_path, capture_output=True,
            text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        sid, run_id = out["created"]["session_id"], str(out["terminate"]["run_id"])
        # The read tasks answer the documents the CLI's --json prints.
        shown = await asyncio.to_thread(run_cli, c.senv, "session", "show", sid, "--json")
        assert json.loads(shown) == out["get_terminated"]
        run_shown = await asyncio.to_thread(run_cli, c.senv, "runs", "show", run_id, "--json")
        assert json.loads(run_shown) == {k: v for k, v in out["run"].items() if k != "items_more"}

    assert out["to_running"][-1] == "RUNNING"
    assert out["to_terminated"][-2:] == ["TERMINATING", "TERMINATED"]
    running = out["get_running"]
    assert running["id"] == sid and running["status"] == "RUNNING"
    assert [k["status"] for k in running["kernels"]] == ["RUNNING"]
    assert running["kernels"][0]["agent"]
    assert sid in [s["id"] for s in out["list_running"]["sessions"]]
    assert out["list_running"]["total"] >= 1
    assert out["get_terminated"]["status"] == "TERMINATED"
    run = out["run"]
    assert run["id"] == out["terminate"]["run_id"]
    assert run["handler"] == "terminate_sessions" and run["status"] == "succeeded"
    assert run["succeeded"] == 1 and run["failed"] == 0
    assert [i["result"] for i in run["items"]] == ["ok"] and run["items_more"] == 0
    batch = out["batch_created"]
    ids = [s["session_id"] for s in batch["sessions"]]
    assert len(set(ids)) == 3 and batch["refused"] == [], batch
    assert all(p[-1] == "RUNNING" for p in out["batch_to_running"].values())
    ended = out["batch_terminate"]
    assert [a["session_id"] for a in ended["sessions"]] == ids
    assert all(a["terminating"] and a["run_id"] == ended["run_id"] for a in ended["sessions"])
    [refused] = ended["refused"]
    assert refused["index"] == 3 and refused["kind"] == "NotFound"
    assert refused["field"] == "session_ids[3]"
    assert all(p[-2:] == ["TERMINATING", "TERMINATED"] for p in out["batch_to_terminated"].values())
    assert out["refused_id"]["kind"] == "InvalidRequest"
    assert out["refused_id"]["field"] == "session_id"
    assert out["unknown_id"]["kind"] == "NotFound"
    assert out["refused_limit"]["field"] == "limit"
    assert out["refused_extra"] == {
        "error": "bogus: unknown field", "kind": "InvalidRequest", "field": "bogus"
    }  # fmt: skip
    assert out["pickled"]["state"] == "FAILURE", out["pickled"]
    assert "not accepted" in out["pickled"]["error"]
    # Each status the session passed came once, in order, with the documented fields.
    mine = [e["status"] for e in out["stream"] if e["session_id"] == sid]
    assert mine[0] in ("SCHEDULED", "PENDING") and mine[-1] == "TERMINATED"
    assert len(mine) == len(set(mine)), mine
    assert all(e["at"].endswith("+00:00") for e in out["stream"])
