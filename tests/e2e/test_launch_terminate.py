"""Sessions of every shape go from submit to RUNNING on real agents, then terminate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from sokovan.types import KernelStatus, SessionStatus
from tests.agents import set_fault
from tests.cluster import Cluster, kernel_processes, running_cluster
from tests.workers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def test_every_session_shape_reaches_running_then_terminates(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-LA-005, SC-LA-006, SC-LA-009, SC-LA-010, SC-LA-011, SC-LA-012 end to end.

    Given two reference agents (process runtime) and a real worker,
    when single-kernel, 3-kernel single-node, 3-kernel multi-node, HOST and PERSISTENT
    sessions are submitted, they all reach RUNNING with no SSH private key left in the
    broker, results or worker log; each kernel is a real process whose environment
    carries the BACKENDAI_* variables; terminating them leaves no process."""
    async with running_cluster(tmp_path, valkey_url, settings={"launch_interval": "2"}) as c:
        shapes: dict[str, dict[str, Any]] = {
            "single": {},
            "single-node": {"kernels": 3},
            "multi-node": {"kernels": 3, "cluster_mode": "multi-node"},
            "host": {"kernels": 2, "network_type": "host", "cluster_mode": "multi-node"},
            "persistent": {"kernels": 2, "network_type": "persistent", "network_id": "n1"},
        }
        sids = {name: c.create(name=name, **req) for name, req in shapes.items()}
        for name, sid in sids.items():
            s = c.wait_status(
                sid, SessionStatus.RUNNING, SessionStatus.TERMINATING, SessionStatus.TERMINATED
            )
            assert s.status == SessionStatus.RUNNING, (name, c.repo.session_status_data(sid))
            assert all(k.status == KernelStatus.RUNNING for k in s.kernels)
        assert_no_private_key_outside_the_agents(c)
        multi = c.session(sids["multi-node"])
        assert len({k.agent_id for k in multi.kernels}) == 2
        assert c.session(sids["persistent"]).network_id == "n1"
        assert (c.session(sids["single-node"]).network_id or "").startswith("bai-singlenode-")
        for k in multi.kernels:
            procs = kernel_processes(str(k.id))
            assert len(procs) == 1, f"kernel {k.id} has {len(procs)} processes"
            env = procs[0].environ()
            assert env["BACKENDAI_SESSION_ID"] == str(multi.id)
            assert env["BACKENDAI_CLUSTER_SIZE"] == "3"
            assert env["BACKENDAI_CLUSTER_HOST"] == k.cluster_hostname
            assert env["BACKENDAI_CLUSTER_ROLE"] == k.cluster_role
        for sid in sids.values():
            answer = c.send("sokovan.session.terminate", session_id=str(sid))
            assert answer["terminating"] is True
        for sid in sids.values():
            s = c.wait_status(sid, SessionStatus.TERMINATED)
            assert all(k.status == KernelStatus.TERMINATED for k in s.kernels)
            for k in s.kernels:
                assert kernel_processes(str(k.id)) == []
        again = c.send("sokovan.session.terminate", session_id=str(sids["single"]))
        assert again["terminating"] is False and "TERMINATED" in again["note"]


def assert_no_private_key_outside_the_agents(c: Cluster) -> None:
    """No SSH private key in the broker, the result backend or the worker's log.

    Single-agent sessions get their keypair from the worker that calls the agent and
    cluster sessions read theirs from the encrypted store; neither may leave a key in
    a task message, a stored result or a log line."""
    client = sync_redis.Redis.from_url(c.senv.settings.redis_url)
    try:
        values: list[Any] = []
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            if kind == b"string":
                values.append(client.get(key) or b"")
            elif kind == b"list":
                values.extend(client.lrange(key, 0, -1))
            elif kind == b"hash":
                values.extend(client.hgetall(key).values())
            elif kind == b"zset":
                values.extend(client.zrange(key, 0, -1))
            elif kind == b"set":
                values.extend(client.smembers(key))
    finally:
        client.close()
    assert values, "the broker holds nothing: the scan read the wrong database"
    texts = [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in values]
    assert not [t for t in texts if "PRIVATE KEY" in t]
    logs = list(c.senv.var_dir.glob("worker-*.log"))
    assert logs and all("PRIVATE KEY" not in log.read_text(errors="replace") for log in logs)


async def test_failed_creation_ends_with_error_info_and_no_leak(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-LA-017 end to end: an agent that fails create_kernels.

    Given a 2-kernel multi-node session over a1 (healthy) and a2 (create_kernels fails),
    the session ends TERMINATED with its error info recorded, and the kernel that a1 did
    create is destroyed: no kernel process is left behind."""
    async with running_cluster(tmp_path, valkey_url) as c:
        await set_fault(
            c.senv.settings.redis_url,
            "a2",
            {"op": "fail", "method": "create_kernels", "message": "disk full"},
        )
        sid = c.create(kernels=2, cluster_mode="multi-node", agents=["a1", "a2"])
        s = c.wait_status(sid, SessionStatus.TERMINATED, timeout=120)
        error = c.repo.session_status_data(sid).get("error")
        assert error and "disk full" in str(error)
        assert s.status_info == "FAILED_TO_START"
        for k in s.kernels:
            assert kernel_processes(str(k.id)) == []
        wait_for(
            lambda: all(
                k.status in (KernelStatus.TERMINATED, KernelStatus.ERROR, KernelStatus.CANCELLED)
                for k in c.session(sid).kernels
            ),
            what="kernels terminal",
        )
