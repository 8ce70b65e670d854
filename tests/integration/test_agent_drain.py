"""Draining an agent through the CLI, with its worker SIGKILLed in the middle (SC-OP-002)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sokovan import constants as C
from sokovan.db.schema import kernels
from sokovan.types import AgentId, SessionId, SessionStatus
from tests.agents import RpcClient
from tests.cluster import IMAGE, Cluster, cluster_without_worker
from tests.workers import celery_beat, celery_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

SOKOVAN = str(Path(sys.executable).parent / "sokovan")
SESSIONS = 20
# One destroy at a time, 0.3 s each: the 20 kernels take about 6 s, so the kill lands midway.
DESTROY_LATENCY = 0.3
DEADLINE_SEC = 150
SMALL = {"cpu": "0.25", "mem": "268435456"}


async def held_by(c: Cluster, agent_id: str) -> int:
    """Kernels the reference agent itself still holds."""
    async with RpcClient(c.agents.addr(agent_id), agent_id) as rpc:
        return int((await rpc.call("health"))["kernels"])


async def wait_destroyed(c: Cluster, agent_id: str, at_least: int) -> int:
    """Polls the agent until `at_least` of its kernels are gone; returns how many remain."""
    async with asyncio.timeout(90):
        while True:
            held = await held_by(c, agent_id)
            if held <= SESSIONS - at_least:
                return held
            await asyncio.sleep(0.05)


def start_drain(env: dict[str, str]) -> subprocess.Popen[str]:
    """`sokovan agents drain a1 --deadline ... --wait --json`, as an operator types it."""
    cmd = [SOKOVAN, "agents", "drain", "a1", "--deadline", f"{DEADLINE_SEC}s", "--wait", "--json"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def listed(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """`agents list --json`, by agent id."""
    proc = subprocess.run(
        [SOKOVAN, "agents", "list", "--json"], env=env, capture_output=True, text=True, check=True
    )
    return {a["id"]: a for a in json.loads(proc.stdout)["agents"]}


def create_on(c: Cluster, agent_id: str, count: int) -> list[SessionId]:
    request = {"image": IMAGE, "agents": [agent_id], "resource_slots": SMALL}
    answer = c.send("sokovan.sessions.create", requests=[request] * count)
    assert not answer["refused"], answer
    return [SessionId(__import__("uuid").UUID(s["session_id"])) for s in answer["sessions"]]


def kernels_of(c: Cluster, agent_id: str) -> list[Any]:
    with c.senv.engine.connect() as conn:
        return list(conn.execute(sa.select(kernels).where(kernels.c.agent_id == agent_id)))


async def test_drain_of_20_sessions_ends_empty_by_its_deadline_despite_a_killed_worker(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-OP-002: `agents drain a1 --deadline 150s --wait` cordons a1, terminates its 20
    sessions (AGENT_DRAINED) with progress, and ends with a1 holding no kernel by the deadline.

    Given 20 RUNNING sessions on a1 and one on a2, beat running, destroys slowed to 0.3 s
    each, when the drain has destroyed some of a1's kernels the worker's whole process group
    is SIGKILLed and a fresh worker started: the drain's intent and the TERMINATING sessions
    are in SQL, so the next runs finish it. The CLI exits 0; every kernel of a1 is
    TERMINATED before the drain's deadline, the agent holds none, a2's session runs on,
    and `agents list` shows a1 drained (still cordoned)."""
    async with cluster_without_worker(
        tmp_path,
        valkey_url,
        agents=2,
        settings={"destroy_concurrency": "1"},
        latency={"destroy_kernel": DESTROY_LATENCY},
    ) as c:
        env = c.senv.env
        with celery_beat(c.senv):
            with celery_worker(c.senv, concurrency=2) as doomed:
                drained = create_on(c, "a1", SESSIONS)
                (other,) = create_on(c, "a2", 1)
                for sid in [*drained, other]:
                    c.wait_status(sid, SessionStatus.RUNNING, timeout=120)
                assert await held_by(c, "a1") == SESSIONS
                drain = start_drain(env)
                held = await wait_destroyed(c, "a1", at_least=3)
                os.killpg(doomed.proc.pid, signal.SIGKILL)
                doomed.proc.wait(10)
            assert held > 0, "the drain finished before the kill"
            with celery_worker(c.senv, concurrency=2):
                out, err = drain.communicate(timeout=DEADLINE_SEC + 120)
                assert drain.returncode == 0, (out, err)
                assert "Traceback" not in err
                answer = json.loads(out)
                assert answer["live_kernels"] == 0 and answer["sessions"] == SESSIONS, answer
                wait_for(
                    lambda: all(c.session(s).status == SessionStatus.TERMINATED for s in drained),
                    timeout=60,
                    what="the drained sessions TERMINATED",
                )
                a1 = listed(env)["a1"]
                wait_for(
                    lambda: c.repo.get_agent("a1").maintenance == "drained",
                    timeout=60,
                    what="check_agents to mark the drain done",
                )
        row = c.repo.get_agent(AgentId("a1"))
        assert row.drain_deadline is not None and not row.schedulable
        assert a1["schedulable"] is False
        assert await held_by(c, "a1") == 0
        finished = kernels_of(c, "a1")
        assert len(finished) == SESSIONS
        assert {k.status for k in finished} == {"TERMINATED"}
        assert all(k.terminated_at <= row.drain_deadline for k in finished)
        assert {c.session(s).status_info for s in drained} == {C.AGENT_DRAINED_REASON}
        assert c.session(other).status == SessionStatus.RUNNING
        assert "agent a1" in err and f"{SESSIONS} done" in err, err  # progress, on stderr


async def test_sc_op_002_a_drain_is_marked_done_as_its_last_kernel_ends_not_at_a_tick(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-OP-002: Given three RUNNING sessions on a1, no beat and an agent check interval of an
    hour, when `sokovan.agents.drain` ends them, a1 reads `drained` within seconds of its last
    kernel ending: the terminate run that emptied a draining agent starts the agents' check,
    which marks the drain done; nothing waits for the next tick."""
    async with cluster_without_worker(
        tmp_path, valkey_url, agents=2, settings={"agent_ping_interval": "3600"}
    ) as c:
        with celery_worker(c.senv, concurrency=2):
            sids = create_on(c, "a1", 3)
            for sid in sids:
                c.wait_status(sid, SessionStatus.RUNNING, timeout=60)
            answer = c.send("sokovan.agents.drain", agent_id="a1", deadline_seconds=60)
            assert answer["sessions"] == 3, answer
            for sid in sids:
                c.wait_status(sid, SessionStatus.TERMINATED, timeout=60)
            wait_for(
                lambda: c.repo.get_agent("a1").maintenance == "drained",
                timeout=20,
                what="a1 marked drained once empty",
            )
        assert await held_by(c, "a1") == 0
