"""SC-OP-004: `session create --count N` through the batch task; every id printed."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from sokovan.types import SessionId, SessionStatus
from tests.cluster import IMAGE, Cluster, running_cluster
from tests.workers import make_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SOKOVAN = str(Path(sys.executable).parent / "sokovan")
ONE_CPU = ["--slot", "cpu=1", "--slot", "mem=1m"]


def cli(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SOKOVAN, *args], env=c.senv.env, capture_output=True, text=True, timeout=200, check=False
    )


async def test_sc_op_004_count_with_pending_prints_every_session(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-OP-004: Given one agent with room for 2 one-CPU sessions, `session create --count 4
    --json` sends one batch message, prints all 4 sessions (2 RUNNING, 2 PENDING with queue
    positions 1 and 2) and exits 0; in text, `--count 3` prints a line for each of the 3."""
    async with running_cluster(
        tmp_path, valkey_url, agents=1, runtime="sim", extra_args=["--cpu", "2"]
    ) as c:
        done = cli(c, "session", "create", "--image", IMAGE, *ONE_CPU, "--count", "4", "--json")
        assert done.returncode == 0, done.stderr
        sessions = json.loads(done.stdout)["sessions"]
        assert sorted(s["status"] for s in sessions) == ["PENDING"] * 2 + ["RUNNING"] * 2
        pending = [s for s in sessions if s["status"] == "PENDING"]
        assert sorted(s["queue_position"] for s in pending) == [1, 2], pending
        stored = {str(s.id) for s in c.repo.sessions_in(list(SessionStatus))}
        assert {s["session_id"] for s in sessions} == stored
        pulls = c.ledger.list_runs(handler="pull_images", limit=10)
        assert [r.requested for r in pulls] == [2], pulls  # one batch: one pull run

        more = cli(c, "session", "create", "--image", IMAGE, *ONE_CPU, "--count", "3")
        assert more.returncode == 0, more.stderr
        lines = more.stdout.strip().splitlines()
        assert len(lines) == 3 and all(" PENDING " in line for line in lines), lines
        for line in lines:
            sid = SessionId(uuid.UUID(line.split()[1]))
            assert c.session(sid).status == SessionStatus.PENDING


async def test_sc_op_004_wait_0_prints_every_id_and_a_resent_id_is_stored_once(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-OP-004: `session create --count 1500 --wait 0 --json` prints 1,500 session ids and
    the two batch tasks that carry them (1,000 + 500) before any worker answered; those ids
    are the sessions the worker stores. A request naming a stored session's id is answered
    with that session and stores nothing new."""
    async with running_cluster(tmp_path, valkey_url, agents=1, runtime="sim") as c:
        done = cli(
            c, "session", "create", "--image", IMAGE, *ONE_CPU, "--count", "1500",
            "--wait", "0", "--json",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        sent = json.loads(done.stdout)["sessions"]
        assert len({s["session_id"] for s in sent}) == 1500
        tasks = [s["task_id"] for s in sent]
        assert len(set(tasks)) == 2 and tasks.count(tasks[0]) == 1000
        for task_id in set(tasks):
            answer = c.app.AsyncResult(task_id).get(timeout=120)
            assert not answer["refused"], answer["refused"][:2]
        stored = {str(s.id) for s in c.repo.sessions_in(list(SessionStatus))}
        assert stored == {s["session_id"] for s in sent}

        again = c.send(
            "sokovan.session.create", request={"image": IMAGE, "session_id": sent[0]["session_id"]}
        )
        assert again["session_id"] == sent[0]["session_id"] and "error" not in again, again
        assert len(c.repo.sessions_in(list(SessionStatus))) == 1500

        text = cli(c, "session", "create", "--image", IMAGE, "--count", "2", "--wait", "0")
        assert text.returncode == 0, text.stderr
        lines = text.stdout.strip().splitlines()
        assert lines[-1] == "sent as 1 task(s)", lines
        assert [line.split()[0] + " " + line.split()[2] for line in lines[:-1]] == [
            "session sent"
        ] * 2


def test_sc_op_004_ids_printed_when_no_worker_answers(tmp_path: Path, valkey_url: str) -> None:
    """SC-OP-004: with no worker, `session create --count 3 --wait 2` prints the 3 session
    ids it sent and exits 3 with one line saying no worker answered."""
    senv = make_env(tmp_path, valkey_url)
    done = subprocess.run(
        [SOKOVAN, "session", "create", "--image", IMAGE, "--count", "3", "--wait", "2"],
        env=senv.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, (done.stdout, done.stderr)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.endswith(" sent") for line in lines), lines
    assert len({uuid.UUID(line.split()[1]) for line in lines}) == 3
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("unreachable: no answer"), done.stderr


async def test_sc_op_004_sc_op_005_terminating_a_burst_by_filter_ends_every_session(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-OP-004 / SC-OP-005: Given one agent with room for 4 one-CPU sessions and 1,500
    created at once (4 RUNNING, 1,496 PENDING), `session terminate --status pending --status
    running --yes --wait 120 --json` (two `sokovan.sessions.terminate` messages) exits 0 and
    prints one document per session: the 4 RUNNING ones TERMINATED through the
    agent, the 1,496 PENDING ones CANCELLED with no agent call; nothing is left live."""
    async with running_cluster(
        tmp_path, valkey_url, agents=1, runtime="sim", extra_args=["--cpu", "4"]
    ) as c:
        made = cli(c, "session", "create", "--image", IMAGE, *ONE_CPU, "--count", "1500",
                   "--wait", "120", "--json")  # fmt: skip
        assert made.returncode == 0, made.stderr[-2000:]
        created = json.loads(made.stdout)["sessions"]
        assert sorted(s["status"] for s in created).count("RUNNING") == 4

        done = cli(c, "session", "terminate", "--status", "pending", "--status", "running",
                   "--yes", "--wait", "120", "--json")  # fmt: skip

        assert done.returncode == 0, done.stderr[-2000:]
        assert "Traceback" not in done.stdout + done.stderr
        ended = json.loads(done.stdout)["sessions"]
        assert {s["session_id"] for s in ended} == {s["session_id"] for s in created}
        by_status: dict[str, int] = {}
        for s in ended:
            by_status[s["status"]] = by_status.get(s["status"], 0) + 1
        assert by_status == {"TERMINATED": 4, "CANCELLED": 1496}, by_status
        assert all(s["terminating"] == (s["status"] == "TERMINATED") for s in ended)
        live = c.repo.sessions_in(
            [
                s
                for s in SessionStatus
                if s not in (SessionStatus.TERMINATED, SessionStatus.CANCELLED)
            ]
        )
        assert live == [], live[:3]
        runs = c.ledger.list_runs(handler="terminate_sessions", limit=50)
        destroyed = sum(r.succeeded for r in runs)
        assert destroyed == 4, runs  # each RUNNING kernel destroyed once, the PENDING never
