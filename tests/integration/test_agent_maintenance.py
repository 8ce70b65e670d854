"""Cordon, uncordon and registration through the CLI as an operator types them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sokovan.types import AgentId, SessionId, SessionStatus
from tests.agents import agent_process
from tests.cluster import IMAGE, Cluster, cluster_without_worker, running_cluster
from tests.workers import celery_beat, celery_worker, make_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SOKOVAN = str(Path(sys.executable).parent / "sokovan")


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SOKOVAN, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def ok(env: dict[str, str], *args: str) -> str:
    proc = run(env, *args)
    assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def listed(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """`agents list --json`, by agent id."""
    return {a["id"]: a for a in json.loads(ok(env, "agents", "list", "--json"))["agents"]}


def slots(cpu: int) -> dict[str, Any]:
    return {"resource_slots": {"cpu": str(cpu), "mem": "268435456"}}


def agent_of(c: Cluster, sid: SessionId) -> set[AgentId | None]:
    return {k.agent_id for k in c.session(sid).kernels}


async def test_cordoned_agent_gets_no_new_session_and_the_queue_waits(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-OP-001: `agents cordon A` keeps new sessions and the pending queue off A; its
    running session is untouched; `agents list` shows it; `agents uncordon A` restores it.

    Given a1 (8 cpu, 1 used) freer than a2 (8 cpu, 3 used), when a1 is cordoned, four new
    1-cpu sessions go to a2 and a 2-cpu one waits PENDING (only cordoned a1 has room) through
    a run of the pending queue; after `uncordon a1` the next run places it on a1."""
    env_cluster = running_cluster(tmp_path, valkey_url, agents=2, runtime="sim")
    async with env_cluster as c:
        env = c.senv.env
        before = c.create(agents=["a1"], **slots(1))
        c.create(agents=["a2"], **slots(3))
        c.wait_status(before, SessionStatus.RUNNING)

        assert "cordoned" in ok(env, "agents", "cordon", "a1")
        agents = listed(env)
        assert (agents["a1"]["schedulable"], agents["a1"]["maintenance"]) == (False, "cordoned")
        assert (agents["a2"]["schedulable"], agents["a2"]["maintenance"]) == (True, "none")
        for field in ("id", "status", "last_contact", "rpc_addr", "capacity", "occupied"):
            assert field in agents["a1"]
        row = next(x for x in ok(env, "agents", "list").splitlines() if x.startswith("a1"))
        assert "cordoned" in row

        placed = [c.create(**slots(1)) for _ in range(4)]
        assert all(agent_of(c, sid) == {"a2"} for sid in placed)
        waiting = c.create(**slots(2))
        assert c.session(waiting).status == SessionStatus.PENDING
        c.send("sokovan.handler.run", handler="schedule_sessions", trigger="manual")
        assert c.session(waiting).status == SessionStatus.PENDING
        assert c.session(before).status == SessionStatus.RUNNING
        assert agent_of(c, before) == {"a1"}

        refused = run(env, "session", "create", "--image", IMAGE, "--agent", "a1", "--wait", "30")
        assert refused.returncode == 1 and "cordoned" in refused.stderr, refused.stderr

        assert "takes new sessions" in ok(env, "agents", "uncordon", "a1")
        assert listed(env)["a1"]["maintenance"] == "none"
        c.send("sokovan.handler.run", handler="schedule_sessions", trigger="manual")
        assert c.session(waiting).status != SessionStatus.PENDING
        assert agent_of(c, waiting) == {"a1"}

        # A manager does the same by the public task names.
        answer = c.send("sokovan.agents.cordon", agent_id="a2")
        assert (answer["schedulable"], answer["maintenance"]) == (False, "cordoned")
        assert listed(env)["a2"]["maintenance"] == "cordoned"
        assert c.send("sokovan.agents.uncordon", agent_id="a2")["schedulable"] is True
        unknown = c.send("sokovan.agents.cordon", agent_id="nope")
        assert (unknown["kind"], unknown["field"]) == ("UnknownAgent", "agent_id")
        assert run(env, "agents", "cordon", "nope").returncode == 1

        # SC-OP-003: the register task refuses with the very line the CLI prints.
        bad = ["x9", "--rpc-addr", "tcp://127.0.0.1:99999"]
        line = run(env, "agents", "register", *bad).stderr.strip()
        answer = c.send("sokovan.agents.register", agent_id="x9", rpc_addr=bad[2])
        assert (answer["kind"], answer["field"]) == ("InvalidRequest", "rpc_addr")
        assert line == f"refused: {answer['error']}"
        capacity = {"cpu": "2", "mem": str(2**30)}
        good = c.send("sokovan.agents.register", agent_id="x9", rpc_addr="tcp://127.0.0.1:9")
        assert good["registered"] is True
        positional = c.app.send_task(
            "sokovan.agents.register", args=["x8", "tcp://h:1", "g", capacity]
        ).get(timeout=60)
        assert positional["registered"] is True
        assert {"x8", "x9"} <= set(listed(env))


async def test_cordon_survives_a_restart_of_every_process(tmp_path: Path, valkey_url: str) -> None:
    """SC-OP-001: a cordon is a row in SQL: a new worker and beat, restarted agents that
    register themselves again (new ports) and `agents sync` keep it, and sessions created
    afterwards still avoid the agent."""
    async with cluster_without_worker(tmp_path, valkey_url, agents=2) as c:
        env = c.senv.env
        ok(env, "agents", "cordon", "a1")  # no worker needed: the CLI writes SQL
        with celery_worker(c.senv), celery_beat(c.senv):
            first = c.create(**slots(1))
        await c.agents.stop()
        redis_url = c.senv.settings.redis_url
        async with agent_process(redis_url, count=2, id_prefix="a") as again:
            ok(env, "agents", "sync")  # the agents' new registrations are read
            assert listed(env)["a1"]["rpc_addr"] == again.agents["a1"]
            with celery_worker(c.senv), celery_beat(c.senv):
                second = c.create(**slots(1))
                third = c.create(**slots(1))
        assert listed(env)["a1"]["maintenance"] == "cordoned"
        for sid in (first, second, third):
            assert agent_of(c, sid) == {"a2"}


# SC-OP-003: `agents register` options -> the field its one-line refusal names (exit 2).
REGISTER_REFUSED: list[tuple[list[str], str]] = [
    (["x9", "--rpc-addr", "tcp://127.0.0.1:99999"], "rpc_addr"),
    (["x9", "--rpc-addr", "tcp://127.0.0.1:0"], "rpc_addr"),
    (["x9", "--rpc-addr", "ipc:///tmp/agent.sock"], "rpc_addr"),
    (["x9", "--rpc-addr", "udp://10.0.0.5:6001"], "rpc_addr"),
    (["x9", "--rpc-addr", "tcp://:6001"], "rpc_addr"),
    (["x9", "--rpc-addr", "10.0.0.5:6001"], "rpc_addr"),
    (["", "--rpc-addr", "tcp://10.0.0.5:6001"], "agent_id"),
    (["x9", "--rpc-addr", "tcp://10.0.0.5:6001", "--cpu", "-3"], "capacity.cpu"),
    (["x9", "--rpc-addr", "tcp://10.0.0.5:6001", "--cpu", "nan"], "capacity.cpu"),
    (["x9", "--rpc-addr", "tcp://10.0.0.5:6001", "--cpu", "inf"], "capacity.cpu"),
    (["x9", "--rpc-addr", "tcp://10.0.0.5:6001", "--cpu", "1e30"], "capacity.cpu"),
    (["x9", "--rpc-addr", "tcp://10.0.0.5:6001", "--cpu", "many"], "capacity.cpu"),
    (["x9", "--rpc-addr", "tcp://10.0.0.5:6001", "--mem", "0"], "capacity.mem"),
    (["x9", "--rpc-addr", "tcp://10.0.0.5:6001", "--mem", "-8g"], "capacity.mem"),
    (["x9", "--rpc-addr", "tcp://10.0.0.5:6001", "--mem", "99999999t"], "capacity.mem"),
    (["x9", "--rpc-addr", "tcp://10.0.0.5:6001", "--scaling-group", ""], "scaling_group"),
]


def test_register_refuses_what_the_task_schema_refuses(tmp_path: Path, valkey_url: str) -> None:
    """SC-OP-003: each bad `agents register` exits 2 with one line naming the field, and
    registers nothing; a good one is listed."""
    env = make_env(tmp_path, valkey_url).env
    for args, field in REGISTER_REFUSED:
        proc = run(env, "agents", "register", *args)
        assert proc.returncode == 2, (args, proc.returncode, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith(f"refused: {field}:"), (args, lines)
    assert listed(env) == {}
    ok(env, "agents", "register", "x9", "--rpc-addr", "tcp://10.0.0.5:6001", "--mem", "16g")
    agent = listed(env)["x9"]
    assert agent["capacity"] == {"cpu": "4", "mem": str(16 * 2**30)}
    assert agent["maintenance"] == "none"
