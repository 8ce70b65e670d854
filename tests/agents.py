"""Reference agents in subprocesses for tests: start, reach over RPC, fault, stop.

    async with agent_process(valkey_url, count=3, runtime="sim") as agents:
        async with RpcClient(agents.addr("a2"), "a2") as rpc:
            assert await rpc.call("ping", "hi") == "hi"
        await set_fault(valkey_url, "a2", {"op": "fail", "method": "destroy_kernel"})

or, in a test, the `start_agents` fixture (import it into the test module or conftest):

    async def test_x(start_agents):
        agents = await start_agents(count=2, runtime="process")
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq.auth
from callosum.auth import AbstractClientAuthenticator, Identity
from callosum.lower.zeromq import ZeroMQAddress, ZeroMQRPCTransport
from callosum.rpc import Peer
from redis.asyncio import Redis

from sokovan import constants as C
from sokovan.agent.wire import packb, request_body, unpackb
from sokovan.agentd.control import send_fault


@dataclass
class AgentProcess:
    """A running `python -m sokovan.agentd run` and the agents it serves."""

    proc: subprocess.Popen[bytes]
    redis_url: str
    log_path: Path
    agents: dict[str, str] = field(default_factory=dict)  # agent id -> rpc address
    client_auth: AbstractClientAuthenticator | None = None  # CURVE, when the agents use it
    # CURVE per agent (each agent its own keypair); wins over client_auth when set.
    client_auth_for: Callable[[str], AbstractClientAuthenticator] | None = None

    def auth_for(self, agent_id: str) -> AbstractClientAuthenticator | None:
        """The client authenticator that reaches one agent."""
        if self.client_auth_for is not None:
            return self.client_auth_for(agent_id)
        return self.client_auth

    @property
    def ids(self) -> list[str]:
        return list(self.agents)

    @property
    def id(self) -> str:
        """The first agent's id."""
        return self.ids[0]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def addr(self, agent_id: str | None = None) -> str:
        """The RPC address (tcp://host:port) of an agent; the first one by default."""
        return self.agents[agent_id or self.id]

    def log_tail(self, lines: int = 40) -> str:
        """The end of the daemon's log, for failure messages."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        """Sends a signal to the daemon if it still runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def wait(self, within: float = 15.0) -> int:
        """Waits up to `within` seconds for the daemon to exit; returns its exit code."""
        async with asyncio.timeout(within):
            # A child's exit has no awaitable here: poll the process table.
            while (code := self.proc.poll()) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        return code

    async def stop(self, within: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return await self.wait(within)
            except TimeoutError:
                self.proc.kill()
        return await self.wait(within)


class RpcClient:
    """A minimal callosum client of one agent, with the body shape a Backend.AI agent expects."""

    def __init__(
        self,
        addr: str,
        agent_id: str | None = None,
        timeout: float = 10.0,
        authenticator: AbstractClientAuthenticator | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.timeout = timeout
        self._peer = Peer(
            connect=ZeroMQAddress(addr),
            transport=ZeroMQRPCTransport,
            authenticator=authenticator,
            serializer=packb,
            deserializer=unpackb,
        )

    async def __aenter__(self) -> RpcClient:
        try:
            await self._peer.__aenter__()
        except BaseException:
            # callosum leaves the socket open when the handshake fails.
            await self._peer.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._peer.__aexit__(*exc)

    async def call(
        self, method: str, *args: Any, invoke_timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Invokes `method`; raises callosum's RPCUserError if the agent raised."""
        body = (
            request_body(self.agent_id, list(args), kwargs)
            if self.agent_id
            else {
                "args": list(args),
                "kwargs": kwargs,
                "metadata": {},
            }
        )
        return await self._peer.invoke(
            method, body, invoke_timeout=self.timeout if invoke_timeout is None else invoke_timeout
        )


async def registered(redis_url: str) -> dict[str, dict[str, Any]]:
    """Every agent entry of the registry, decoded."""
    redis: Redis = Redis.from_url(redis_url)
    try:
        raw = await redis.hgetall(C.AGENT_REGISTRY_KEY)
    finally:
        await redis.aclose()
    return {k.decode() if isinstance(k, bytes) else k: json.loads(v) for k, v in raw.items()}


async def set_fault(
    redis_url: str, agent_id: str, op: Mapping[str, Any], wait: float = 10.0
) -> None:
    """Applies a fault operation through Redis and waits until the agent took it."""
    redis: Redis = Redis.from_url(redis_url)
    try:
        await send_fault(redis, agent_id, op, wait=wait)
    finally:
        await redis.aclose()


class CurveClientAuth(AbstractClientAuthenticator):
    """A CURVE client identity for callosum: its keypair and the agent's public key."""

    def __init__(self, server_public: bytes, public: bytes, secret: bytes) -> None:
        self._server_public = server_public
        self._public = public
        self._secret = secret

    async def server_public_key(self) -> bytes:
        return self._server_public

    async def client_identity(self) -> Identity:
        return Identity("local", self._secret)

    async def client_public_key(self) -> bytes:
        return self._public


@dataclass(frozen=True)
class CurvePair:
    """ZeroMQ certificates of an agent and of the one client it admits."""

    agent_secret_file: Path
    agent_public_file: Path
    client_secret_file: Path
    client_public_file: Path

    @classmethod
    def create(cls, folder: Path) -> CurvePair:
        """Fresh certificates in `folder`."""
        agent_public, agent_secret = zmq.auth.create_certificates(str(folder), "agent")
        client_public, client_secret = zmq.auth.create_certificates(str(folder), "manager")
        return cls(Path(agent_secret), Path(agent_public), Path(client_secret), Path(client_public))

    def agent_args(self) -> list[str]:
        """The `run` options that turn CURVE on and admit the client."""
        return [
            "--curve-secret-key-file",
            str(self.agent_secret_file),
            "--curve-client-key-file",
            str(self.client_public_file),
        ]

    def client_auth(self) -> CurveClientAuth:
        """The client's side, for RpcClient(authenticator=...)."""
        server_public, _ = zmq.auth.load_certificate(str(self.agent_public_file))
        public, secret = zmq.auth.load_certificate(str(self.client_secret_file))
        assert secret is not None
        return CurveClientAuth(server_public, public, secret)


def _command(
    redis_url: str,
    agent_id: str,
    count: int,
    id_prefix: str | None,
    runtime: str,
    presence_interval: float,
    latency: Mapping[str, float] | None,
    extra_args: Sequence[str],
) -> list[str]:
    cmd = [sys.executable, "-m", "sokovan.agentd", "run", "--redis-url", redis_url]
    cmd += ["--runtime", runtime, "--presence-interval", str(presence_interval)]
    if count == 1 and id_prefix is None:
        cmd += ["--id", agent_id, "--port", "0"]
    else:
        cmd += ["--count", str(count), "--base-port", "0", "--id-prefix", id_prefix or "a"]
    if latency:
        cmd += ["--latency", ",".join(f"{k}={v}" for k, v in latency.items())]
    return [*cmd, *extra_args]


async def _wait_ready(agents: AgentProcess, ids: list[str], within: float) -> None:
    async with asyncio.timeout(within):
        while True:
            if agents.proc.poll() is not None:
                pytest.fail(f"reference agent exited early:\n{agents.log_tail()}")
            entries = await registered(agents.redis_url)
            mine = {i: e for i, e in entries.items() if i in ids and e.get("pid") == agents.pid}
            if len(mine) == len(ids):
                agents.agents = {i: mine[i]["rpc_addr"] for i in ids}
                break
            await asyncio.sleep(0.1)
        for agent_id in ids:
            client = RpcClient(
                agents.addr(agent_id), agent_id, authenticator=agents.auth_for(agent_id)
            )
            async with client as rpc:
                assert await rpc.call("ping", "ready") == "ready"


def _spawn(cmd: list[str], redis_url: str) -> AgentProcess:
    fd, name = tempfile.mkstemp(prefix="agentd-", suffix=".log")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.Popen(cmd, stdout=fd, stderr=subprocess.STDOUT, env=env)
    finally:
        os.close(fd)
    return AgentProcess(proc=proc, redis_url=redis_url, log_path=Path(name))


@asynccontextmanager
async def agent_process(
    redis_url: str,
    *,
    agent_id: str = "a1",
    count: int = 1,
    id_prefix: str | None = None,
    runtime: str = "sim",
    presence_interval: float = 0.5,
    latency: Mapping[str, float] | None = None,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 30.0,
    curve: CurvePair | None = None,
    client_auth_for: Callable[[str], AbstractClientAuthenticator] | None = None,
) -> AsyncIterator[AgentProcess]:
    """Starts reference agents on free ports, waits until registered and answering ping."""
    ids = (
        [agent_id]
        if count == 1 and id_prefix is None
        else [f"{id_prefix or 'a'}{i}" for i in range(1, count + 1)]
    )
    if curve is not None:
        extra_args = [*extra_args, *curve.agent_args()]
    cmd = _command(
        redis_url, agent_id, count, id_prefix, runtime, presence_interval, latency, extra_args
    )
    agents = _spawn(cmd, redis_url)
    agents.client_auth = curve.client_auth() if curve is not None else None
    agents.client_auth_for = client_auth_for
    try:
        try:
            await _wait_ready(agents, ids, ready_timeout)
        except TimeoutError:
            pytest.fail(
                f"reference agents {ids} not ready in {ready_timeout}s:\n{agents.log_tail()}"
            )
        yield agents
    finally:
        await agents.stop()
        agents.log_path.unlink(missing_ok=True)


StartAgents = Callable[..., Awaitable[AgentProcess]]


@pytest.fixture
async def start_agents(valkey_url: str) -> AsyncIterator[StartAgents]:
    """A factory: `await start_agents(count=..., runtime=...)`; all are stopped at teardown."""
    async with AsyncExitStack() as stack:

        async def _start(**kwargs: Any) -> AgentProcess:
            return await stack.enter_async_context(agent_process(valkey_url, **kwargs))

        yield _start
