"""The chaos soak's cluster: every process real, each one SIGKILLed and started again on demand.

One Valkey (append-only file in its data dir, or none), SQLite, one reference agent per
process (runtime `process`: every kernel an OS process that dies with its agent), one Celery
worker tree and celery beat, all from the test harnesses. A fault SIGKILLs one of them (the
worker's whole process group) and starts it again as before: the agent with its id and port,
Valkey on its port and data dir.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from redis.asyncio import Redis

from sokovan.db.offload import OffloadedStore
from sokovan.db.repository import SchedulerRepository
from sokovan.scheduler.agents import sync_agents
from sokovan.types import ImageConfig
from tests.agents import AgentProcess, agent_process
from tests.conftest import free_port
from tests.outages import RestartableValkey
from tests.services import celery_beat
from tests.workers import SchedulerEnv, WorkerProcess, celery_worker, make_env

IMAGE = "cr.backend.ai/stable/python:3.12-ubuntu22.04"
FAULT_KINDS = ("worker", "beat", "valkey", "agent")
# Short presence windows and ticks (as the demo's), so the sweep can find a dead kernel and
# every handler re-drive its work well within the 60 s of calm; the rest is the defaults.
SOAK_SETTINGS = {
    "presence_stale_after": "4",
    "presence_refresh": "2",
    "sweep_interval": "3",
    "terminate_interval": "3",
    "launch_interval": "3",
}
PRESENCE_INTERVAL = 0.5
# How long a killed Valkey or agent stays down before it starts again.
DOWN_FOR = 1.0
WORKER_CONCURRENCY = 2


@dataclass(frozen=True, slots=True)
class Fault:
    """One SIGKILL and restart: what, when (monotonic), and when it was back."""

    kind: str
    target: str
    killed_at: float
    back_at: float | None
    error: str = ""


@dataclass
class _Held:
    """A running process and the context that started it (exited to clean up after a kill)."""

    context: Any
    process: Any


@dataclass
class ChaosCluster:
    """The soak's processes, and how to kill and restart each."""

    root: Path
    agent_count: int
    append_only: bool = True
    senv: SchedulerEnv | None = None
    valkey: RestartableValkey | None = None
    ports: dict[str, int] = field(default_factory=dict)
    _agents: dict[str, _Held] = field(default_factory=dict)
    _worker: _Held | None = None
    _beat: _Held | None = None
    _starts: dict[str, int] = field(default_factory=dict)
    # Worker or beat exits a supervisor would have restarted (see `revive`), with why.
    revived: list[str] = field(default_factory=list)

    @property
    def env(self) -> SchedulerEnv:
        assert self.senv is not None, "the cluster is not started"
        return self.senv

    @property
    def agent_ids(self) -> list[str]:
        return list(self.ports)

    def agent_pids(self) -> dict[str, int]:
        """Agent id -> the process id of its daemon now."""
        return {aid: held.process.pid for aid, held in self._agents.items()}

    def kernel_processes(self, agent_id: str) -> dict[str, int]:
        """Kernel id -> process id of the kernels the agent runs now (its live children)."""
        held = self._agents.get(agent_id)
        if held is None:
            return {}
        found: dict[str, int] = {}
        try:
            children = psutil.Process(held.process.pid).children()
        except psutil.NoSuchProcess:
            return {}
        for child in children:
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue
                kid = child.environ().get("BACKENDAI_KERNEL_ID")
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if kid:
                found[kid] = child.pid
        return found

    def exited(self) -> dict[str, str]:
        """Processes that exited on their own, not by a fault of the soak: name -> why."""
        out: dict[str, str] = {}
        for name, held in (("worker", self._worker), ("beat", self._beat)):
            code = None if held is None else held.process.proc.poll()
            if held is not None and code is not None:
                out[name] = f"exit code {code}{_last_critical(held.process.output())}"
        for aid, held in self._agents.items():
            if (code := held.process.proc.poll()) is not None:
                out[aid] = f"exit code {code}"
        return out

    async def start(self, settings: Mapping[str, str]) -> None:
        """Valkey, SQLite, the agents (registered), the worker and beat."""
        self.valkey = RestartableValkey(self.root / "valkey", append_only=self.append_only)
        await asyncio.to_thread(self.valkey.start)
        self.senv = make_env(self.root, self.valkey.url, **{**SOAK_SETTINGS, **settings})
        repo = SchedulerRepository(self.senv.engine)
        repo.add_image(ImageConfig(canonical=IMAGE))
        for n in range(1, self.agent_count + 1):
            aid = f"a{n}"
            self.ports[aid] = free_port()
            await self._start_agent(aid)
        redis: Redis = Redis.from_url(self.senv.settings.redis_url)
        try:
            await sync_agents(redis, OffloadedStore(repo))
        finally:
            await redis.aclose()
        await asyncio.to_thread(self._start_worker)
        await asyncio.to_thread(self._start_beat)

    async def close(self) -> None:
        """Stops everything, Valkey last; keeps the agents' logs in the root."""
        for aid in list(self._agents):
            await self._stop_agent(aid)
        for held in (self._beat, self._worker):
            if held is not None:
                await asyncio.to_thread(held.context.__exit__, None, None, None)
        self._beat = self._worker = None
        if self.senv is not None:
            self.senv.engine.dispose()
        if self.valkey is not None and self.valkey._server is not None:
            await asyncio.to_thread(self.valkey._server.stop)

    async def inject(self, kind: str, agent_id: str | None = None) -> Fault:
        """SIGKILLs one part (`agent_id`, or the next agent in turn) and starts it again."""
        target = (agent_id or self.next_agent()) if kind == "agent" else kind
        killed_at = time.monotonic()
        try:
            if kind == "worker":
                await asyncio.to_thread(self._restart_worker)
            elif kind == "beat":
                await asyncio.to_thread(self._restart_beat)
            elif kind == "valkey":
                assert self.valkey is not None
                await asyncio.to_thread(self.valkey.kill, DOWN_FOR)
            elif kind == "agent":
                await self._restart_agent(target)
            else:
                raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        # A restart that failed is a figure of the soak, not its end (the agent harness says
        # so with pytest's Failed, not an Exception).
        except (Exception, pytest.fail.Exception) as e:
            return Fault(kind, target, killed_at, None, f"{type(e).__name__}: {e}"[:300])
        return Fault(kind, target, killed_at, time.monotonic())

    def revive(self) -> None:
        """Starts the worker or beat again if it exited on its own, as a supervisor
        (systemd's Restart=always, a Kubernetes pod) does; each is noted in `revived`."""
        for name, held, restart in (
            ("worker", self._worker, self._restart_worker),
            ("beat", self._beat, self._restart_beat),
        ):
            if held is None or held.process.proc.poll() is None:
                continue
            why = f"exit code {held.process.proc.returncode}{_last_critical(held.process.output())}"
            self.revived.append(f"{name}: {why}")
            restart()

    def next_agent(self) -> str:
        """The agent whose turn it is to be killed."""
        return self.agent_ids[self._count("agent-turn") % self.agent_count]

    def _count(self, what: str) -> int:
        self._starts[what] = self._starts.get(what, 0) + 1
        return self._starts[what] - 1

    def _start_worker(self) -> None:
        context = celery_worker(self.env, concurrency=WORKER_CONCURRENCY, timeout=120)
        self._worker = _Held(context, _enter(context))

    def _restart_worker(self) -> None:
        if self._worker is not None:  # None: its last restart failed; start it now
            worker: WorkerProcess = self._worker.process
            _kill_group(worker.proc.pid)
            worker.proc.wait(10)
            self._worker.context.__exit__(None, None, None)
            self._worker = None
        self._start_worker()

    def _start_beat(self) -> None:
        context = celery_beat(self.env, name=f"beat-{self._count('beat')}")
        self._beat = _Held(context, _enter(context))

    def _restart_beat(self) -> None:
        if self._beat is not None:  # None: its last restart failed; start it now
            beat: WorkerProcess = self._beat.process
            _kill_group(beat.proc.pid)
            beat.proc.wait(10)
            self._beat.context.__exit__(None, None, None)
            self._beat = None
        self._start_beat()

    async def _start_agent(self, aid: str) -> None:
        context = agent_process(
            self.env.settings.redis_url,
            agent_id=aid,
            runtime="process",
            presence_interval=PRESENCE_INTERVAL,
            extra_args=["--port", str(self.ports[aid]), "--log-level", "INFO"],
            ready_timeout=60.0,
        )
        self._agents[aid] = _Held(context, await context.__aenter__())

    async def _stop_agent(self, aid: str) -> None:
        held = self._agents.pop(aid)
        agent: AgentProcess = held.process
        if agent.log_path.exists():
            shutil.copy(agent.log_path, self.env.var_dir / f"agent-{aid}-{agent.pid}.log")
        await held.context.__aexit__(None, None, None)

    async def _restart_agent(self, aid: str) -> None:
        if aid in self._agents:  # absent: its last restart failed; start it now
            agent: AgentProcess = self._agents[aid].process
            agent.proc.send_signal(signal.SIGKILL)  # its kernels die with it (PDEATHSIG)
            await agent.wait()
            await self._stop_agent(aid)
        await asyncio.sleep(DOWN_FOR)
        await self._start_agent(aid)


def _last_critical(log: str) -> str:
    """`: Unrecoverable error: ...`, the last CRITICAL line of a Celery log, if any."""
    lines = [line for line in log.splitlines() if "CRITICAL/" in line]
    return f": {lines[-1].split('] ', 1)[-1][:200]}" if lines else ""


def _enter(context: AbstractContextManager[Any]) -> Any:
    return context.__enter__()


def _kill_group(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@asynccontextmanager
async def chaos_cluster(
    root: Path, agents: int, append_only: bool = True, settings: Mapping[str, str] | None = None
) -> AsyncIterator[ChaosCluster]:
    """A started ChaosCluster under `root`, stopped after."""
    cluster = ChaosCluster(root, agents, append_only)
    try:
        await cluster.start(dict(settings or {}))
        yield cluster
    finally:
        await cluster.close()
