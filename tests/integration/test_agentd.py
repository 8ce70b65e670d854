"""The reference agent over real RPC, with real Valkey: methods, runtimes, presence, faults."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from callosum.exceptions import AuthenticationError
from callosum.rpc import RPCUserError
from redis.asyncio import Redis
from typer.testing import CliRunner

from sokovan import constants as C
from sokovan.agent.wire import ExtType, OpaqueExt
from sokovan.agentd.cli import app
from sokovan.presence import presence_key
from tests.agents import CurvePair, RpcClient, StartAgents, registered, set_fault, start_agents

pytestmark = pytest.mark.integration
__all__ = ["start_agents"]  # the fixture, imported for pytest


def _config(image: str = "cr.backend.ai/stable/python:3.11", **environ: str) -> dict[str, Any]:
    return {"image": {"canonical": image}, "environ": dict(environ), "resource_slots": {}}


async def _create(
    rpc: RpcClient, *configs: dict[str, Any]
) -> tuple[uuid.UUID, list[uuid.UUID], list[dict[str, Any]]]:
    sid = uuid.uuid4()
    kids = [uuid.uuid4() for _ in configs]
    # Image refs travel as pickles (ext 7) a real manager sends; the agent must not unpickle them.
    refs = {kid: OpaqueExt(ExtType.IMAGE_REF, b"\x80\x04not-a-real-pickle") for kid in kids}
    infos = await rpc.call(
        "create_kernels", str(sid), [str(k) for k in kids], list(configs), {}, refs
    )
    return sid, kids, infos


async def _last_presence(redis: Redis, kernel_id: uuid.UUID) -> int | None:
    raw = await redis.hget(presence_key(str(kernel_id)), "last_presence")
    return None if raw is None else int(raw)


def _environ_of(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def _pid_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def _until(predicate: Any, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        # Presence and process state change outside this process: poll them.
        while not await predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def test_every_method_over_rpc(presence_redis: Redis, start_agents: StartAgents) -> None:
    """Each RPC method answers with a Backend.AI agent's shape; presence and registry follow."""
    agents = await start_agents(agent_id="node-1")
    async with RpcClient(agents.addr(), "node-1") as rpc:
        assert await rpc.call("ping", "hello") == "hello"
        health = await rpc.call("health")
        assert (health["status"], health["agent_id"], health["kernels"]) == ("ok", "node-1", 0)
        pulled = await rpc.call("check_and_pull", {"img:1": {"canonical": "img:1"}, "img:2": {}})
        assert set(pulled) == {"img:1", "img:2"}
        assert await rpc.call("create_local_network", "net-a") is None
        assert await rpc.call("destroy_local_network", "net-a") is None
        port = await rpc.call("assign_port")
        assert isinstance(port, int) and port > 0

        sid, kids, infos = await _create(rpc, _config(), _config())
        assert [i["id"] for i in infos] == [str(k) for k in kids]
        assert all(i["agent_addr"] == agents.addr() and i["container_id"] for i in infos)
        assert [await rpc.call("check_running", str(k)) for k in kids] == [True, True]
        assert await presence_redis.hget(presence_key(str(kids[0])), "presence") == b"1"

        assert await rpc.call("destroy_kernel", str(kids[0]), str(sid), "user-requested") is None
        assert await rpc.call("check_running", str(kids[0])) is False
        assert await rpc.call("check_running", str(kids[1])) is True
        assert not await presence_redis.exists(presence_key(str(kids[0])))
    entry = (await registered(agents.redis_url))["node-1"]
    assert entry["rpc_addr"] == agents.addr() and entry["pid"] == agents.pid
    assert set(entry) >= {"scaling_group", "capacity", "runtime", "heartbeat"}


async def test_destroy_and_create_are_idempotent(start_agents: StartAgents) -> None:
    """Destroying an unknown kernel succeeds; creating an existing kernel id returns its info."""
    agents = await start_agents()
    async with RpcClient(agents.addr(), agents.id) as rpc:
        assert await rpc.call("destroy_kernel", str(uuid.uuid4()), str(uuid.uuid4())) is None
        sid, kids, first = await _create(rpc, _config())
        again = await rpc.call("create_kernels", str(sid), kids, [_config()], {}, {})
        assert again == first
        assert (await rpc.call("health"))["kernels"] == 1
        for _ in range(2):
            assert await rpc.call("destroy_kernel", kids[0], sid, None, False) is None


async def test_bad_calls_are_user_errors_and_the_agent_keeps_serving(
    start_agents: StartAgents,
) -> None:
    """A wrong agent id, an unknown method or a bad argument fails that call only."""
    agents = await start_agents()
    async with RpcClient(agents.addr(), "someone-else") as wrong:
        with pytest.raises(RPCUserError) as e:
            await wrong.call("ping", "x")
        assert e.value.name == "AgentIdNotFoundError"
    async with RpcClient(agents.addr(), agents.id) as rpc:
        with pytest.raises(RPCUserError) as e:
            await rpc.call("no_such_method")
        assert e.value.name == "UnknownRPCMethod"
        with pytest.raises(RPCUserError) as e:
            await rpc.call("check_running", "not-a-uuid")
        assert e.value.name == "ValueError"
        assert await rpc.call("ping", "still here") == "still here"


async def test_process_kernel_env_death_and_stale_presence(
    presence_redis: Redis, start_agents: StartAgents
) -> None:
    """Process runtime: env from the config; a killed process is not running and goes stale.

    The realistic path behind SC-CSK-002 / SC-TE-009: presence stops advancing for the
    dead kernel while a living one keeps being refreshed.
    """
    agents = await start_agents(runtime="process", presence_interval=0.3)
    async with RpcClient(agents.addr(), agents.id) as rpc:
        env = {"BACKENDAI_CLUSTER_ROLE": "main", "BACKENDAI_CLUSTER_HOST": "main1"}
        sid, (dead, alive), _ = await _create(rpc, _config(**env), _config())
        pids = {
            k: v["pid"]
            for k, v in (await rpc.call("sokovan_control", {"op": "status"}))["kernels"].items()
        }
        environ = _environ_of(pids[str(dead)])
        assert {f"{k}={v}".encode() for k, v in env.items()} <= set(environ)
        assert f"BACKENDAI_KERNEL_ID={dead}".encode() in environ

        os.kill(pids[str(dead)], signal.SIGKILL)
        await _until(lambda: _is_false(rpc.call("check_running", str(dead))))
        frozen = await _last_presence(presence_redis, dead)
        assert frozen is not None

        async def alive_moved_past() -> bool:
            latest = await _last_presence(presence_redis, alive)
            return latest is not None and latest > frozen + 1

        await _until(alive_moved_past)
        assert await _last_presence(presence_redis, dead) == frozen
        assert await rpc.call("check_running", str(alive)) is True
        assert await rpc.call("destroy_kernel", str(dead), str(sid)) is None
        assert await rpc.call("destroy_kernel", str(alive), str(sid)) is None
        assert not _pid_exists(pids[str(alive)])


async def _is_false(call: Any) -> bool:
    return await call is False


async def test_fault_fail_via_rpc_and_clear_via_redis(start_agents: StartAgents) -> None:
    """`fail` raises InjectedFault with its message (agent side of SC-TE-012); clear undoes it."""
    agents = await start_agents()
    async with RpcClient(agents.addr(), agents.id) as rpc:
        sid, (kid,), _ = await _create(rpc, _config())
        await rpc.call(
            "sokovan_control", {"op": "fail", "method": "destroy_kernel", "message": "disk on fire"}
        )
        with pytest.raises(RPCUserError) as e:
            await rpc.call("destroy_kernel", str(kid), str(sid))
        assert e.value.name == "InjectedFault" and "disk on fire" in e.value.repr
        assert await rpc.call("check_running", str(kid)) is True
        await set_fault(agents.redis_url, agents.id, {"op": "clear"})
        assert await rpc.call("destroy_kernel", str(kid), str(sid)) is None


async def test_fault_hang_outlasts_the_client_timeout(start_agents: StartAgents) -> None:
    """`hang` delays a method past the caller's timeout; other methods still answer."""
    agents = await start_agents()
    await set_fault(
        agents.redis_url, agents.id, {"op": "hang", "method": "check_running", "seconds": 30}
    )
    async with RpcClient(agents.addr(), agents.id) as rpc:
        with pytest.raises(TimeoutError):
            await rpc.call("check_running", str(uuid.uuid4()), invoke_timeout=0.5)
        assert await rpc.call("ping", "ok") == "ok"


async def test_fault_answer_none_or_false_for_given_kernels(start_agents: StartAgents) -> None:
    """`answer` replies a fixed value for the named kernels only (agent side of SC-TE-016)."""
    agents = await start_agents()
    async with RpcClient(agents.addr(), agents.id) as rpc:
        _, (odd, fine), _ = await _create(rpc, _config(), _config())
        await set_fault(
            agents.redis_url,
            agents.id,
            {"op": "answer", "method": "check_running", "value": None, "kernels": [str(odd)]},
        )
        assert await rpc.call("check_running", str(odd)) is None
        assert await rpc.call("check_running", str(fine)) is True
        await rpc.call(
            "sokovan_control", {"op": "answer", "method": "check_running", "value": False}
        )
        assert await rpc.call("check_running", str(fine)) is False


async def test_fault_silent_then_cleared_through_redis(
    presence_redis: Redis, start_agents: StartAgents
) -> None:
    """A silent agent answers nothing and refreshes nothing until cleared through Redis."""
    agents = await start_agents(presence_interval=0.3)
    async with RpcClient(agents.addr(), agents.id) as rpc:
        _, (kid,), _ = await _create(rpc, _config())
        await set_fault(agents.redis_url, agents.id, {"op": "silent"})
        with pytest.raises(TimeoutError):
            await rpc.call("ping", "anyone?", invoke_timeout=0.5)
        frozen = await _last_presence(presence_redis, kid)
        await set_fault(agents.redis_url, agents.id, {"op": "clear"})
        assert await rpc.call("ping", "back") == "back"

        async def refreshed() -> bool:
            latest = await _last_presence(presence_redis, kid)
            return latest is not None and frozen is not None and latest > frozen

        await _until(refreshed)


async def test_stop_presence_for_one_kernel(
    presence_redis: Redis, start_agents: StartAgents
) -> None:
    """`stop_presence` freezes one kernel's presence while the process still runs."""
    agents = await start_agents(presence_interval=0.3)
    async with RpcClient(agents.addr(), agents.id) as rpc:
        _, (quiet, loud), _ = await _create(rpc, _config(), _config())
        await set_fault(
            agents.redis_url, agents.id, {"op": "stop_presence", "kernels": [str(quiet)]}
        )
        frozen = await _last_presence(presence_redis, quiet)
        assert frozen is not None

        async def loud_moved_past() -> bool:
            latest = await _last_presence(presence_redis, loud)
            return latest is not None and latest > frozen + 1

        await _until(loud_moved_past)
        assert await _last_presence(presence_redis, quiet) == frozen
        assert await rpc.call("check_running", str(quiet)) is True


async def test_twenty_agents_in_one_process(start_agents: StartAgents) -> None:
    """--count 20 serves twenty agents, each on its own port, each registered and answering."""
    agents = await start_agents(count=20, id_prefix="n")
    assert agents.ids == [f"n{i}" for i in range(1, 21)]
    assert len(set(agents.agents.values())) == 20
    for agent_id in agents.ids:
        async with RpcClient(agents.addr(agent_id), agent_id) as rpc:
            assert (await rpc.call("health"))["agent_id"] == agent_id
    entries = await registered(agents.redis_url)
    assert {i for i, e in entries.items() if e["pid"] == agents.pid} == set(agents.ids)


async def test_sigterm_unregisters_and_kills_kernels(
    redis: Redis, presence_redis: Redis, start_agents: StartAgents
) -> None:
    """SIGTERM closes the socket, kills process kernels, drops presence and unregisters."""
    agents = await start_agents(runtime="process")
    async with RpcClient(agents.addr(), agents.id) as rpc:
        _, (kid,), _ = await _create(rpc, _config())
        status = await rpc.call("sokovan_control", {"op": "status"})
    pid = status["kernels"][str(kid)]["pid"]
    assert await redis.hexists(C.AGENT_REGISTRY_KEY, agents.id)
    agents.signal(signal.SIGTERM)
    assert await agents.wait() == 0
    assert not await redis.hexists(C.AGENT_REGISTRY_KEY, agents.id)
    assert not await presence_redis.exists(presence_key(str(kid)))
    assert not _pid_exists(pid)


async def test_cli_fault_command_and_bad_options(start_agents: StartAgents) -> None:
    """`fault` applies an operation through Redis; a bad --latency is refused."""
    agents = await start_agents()
    runner = CliRunner()
    args = ["fault", agents.id, "fail", "--method", "ping", "--redis-url", agents.redis_url]
    result = await asyncio.to_thread(runner.invoke, app, args)
    assert result.exit_code == 0, result.output
    async with RpcClient(agents.addr(), agents.id) as rpc:
        with pytest.raises(RPCUserError):
            await rpc.call("ping", "x")
    bad = await asyncio.to_thread(runner.invoke, app, ["run", "--latency", "nope=1"])
    assert bad.exit_code != 0
    registry = await registered(agents.redis_url)
    assert json.loads(json.dumps(registry[agents.id]))["runtime"] == "sim"


async def test_curve_admits_the_known_client(start_agents: StartAgents, tmp_path: Path) -> None:
    """With CURVE on, the admitted client is served and a plain client is not."""
    agents = await start_agents(curve=CurvePair.create(tmp_path))
    async with RpcClient(agents.addr(), agents.id, authenticator=agents.client_auth) as rpc:
        assert await rpc.call("ping", "sealed") == "sealed"
    with pytest.raises(AuthenticationError):
        async with RpcClient(agents.addr(), agents.id) as plain:
            await plain.call("ping", "open?")
