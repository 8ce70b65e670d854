"""A whole scheduler for end-to-end tests: Valkey, SQLite, reference agents, a real worker."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
from celery import Celery, states
from redis.asyncio import Redis

from sokovan.db.ledger import RunLedger
from sokovan.db.offload import OffloadedStore
from sokovan.db.repository import SchedulerRepository
from sokovan.scheduler.agents import sync_agents
from sokovan.types import AgentId, ImageConfig, SessionId, SessionInfo, SessionStatus
from tasks.app import create_app
from tests.agents import AgentProcess, agent_process
from tests.workers import SchedulerEnv, celery_beat, celery_worker, make_env, wait_for

IMAGE = "cr.backend.ai/stable/python:3.12-ubuntu22.04"


@dataclass
class Cluster:
    senv: SchedulerEnv
    app: Celery
    repo: SchedulerRepository
    ledger: RunLedger
    agents: AgentProcess

    def send(self, task: str, timeout: float = 60.0, **kwargs: Any) -> Any:
        """Sends a public task and waits for its answer, read where the worker stored it.

        Not `.get()`: a caller's subscription made before a restart of the result store can
        miss the answer stored after it (celery/celery#4857), and a subscription left pending
        on a store that a test stopped makes a later test's garbage collection reconnect to
        it for 20 s. That is the caller's Celery, not the scheduler.
        """
        sent = self.app.send_task(task, kwargs=kwargs)
        deadline = time.monotonic() + timeout
        while True:
            try:
                meta = self.app.backend.get_task_meta(sent.id)
            except self.app.backend.connection_errors:
                meta = {"status": states.PENDING}  # the store is restarting: read again
            if meta["status"] in states.READY_STATES:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer to {task} within {timeout:g} s")
            time.sleep(0.05)
        if meta["status"] != states.SUCCESS:
            raise self.app.backend.exception_to_python(meta["result"])
        return meta["result"]

    def create(self, timeout: float = 60.0, **request: Any) -> SessionId:
        answer = self.send(
            "sokovan.session.create", timeout=timeout, request={"image": IMAGE, **request}
        )
        assert "session_id" in answer, answer
        return SessionId(__import__("uuid").UUID(answer["session_id"]))

    def session(self, sid: SessionId) -> SessionInfo:
        return self.repo.get_session(sid)

    def wait_status(
        self, sid: SessionId, *statuses: SessionStatus, timeout: float = 90.0
    ) -> SessionInfo:
        wait_for(
            lambda: self.session(sid).status in statuses,
            timeout=timeout,
            what=f"session {sid} to reach {statuses}",
        )
        return self.session(sid)


def kernel_processes(kernel_id: str) -> list[psutil.Process]:
    """OS processes whose environment names this kernel."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("BACKENDAI_KERNEL_ID") == kernel_id:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


@asynccontextmanager
async def running_cluster(
    tmp_path: Path,
    valkey_url: str,
    *,
    agents: int = 2,
    runtime: str = "process",
    settings: Mapping[str, str] | None = None,
    concurrency: int = 2,
    beat: bool = False,
    **agent_kwargs: Any,
) -> AsyncIterator[Cluster]:
    """Everything running (beat too with `beat`); the agents are registered, one image known."""
    async with cluster_without_worker(
        tmp_path, valkey_url, agents=agents, runtime=runtime, settings=settings, **agent_kwargs
    ) as cluster:
        with celery_worker(cluster.senv, concurrency=concurrency), ExitStack() as extra:
            if beat:
                extra.enter_context(celery_beat(cluster.senv))
            yield cluster


def ghost_agent(c: Cluster, agent_id: str = "ghost") -> AgentId:
    """Registers an agent where nothing listens (4 cores, 8 GiB) and returns its id."""
    from sokovan.records import AgentRow
    from sokovan.types import ResourceSlot
    from tests.conftest import free_port

    ghost = AgentId(agent_id)
    c.repo.upsert_agent(
        AgentRow(
            id=ghost,
            rpc_addr=f"tcp://127.0.0.1:{free_port()}",
            capacity=ResourceSlot.from_json({"cpu": "4", "mem": "8589934592"}),
        )
    )
    return ghost


def kernel_rows(
    senv: SchedulerEnv, kernel_ids: Iterable[object]
) -> dict[str, tuple[str, str | None]]:
    """Kernel id -> (status, status_info) straight from the database."""
    from sokovan.db.schema import kernels

    ids = [uuid.UUID(str(k)) for k in kernel_ids]
    with senv.engine.connect() as conn:
        rows = conn.execute(
            sa.select(kernels.c.id, kernels.c.status, kernels.c.status_info).where(
                kernels.c.id.in_(ids)
            )
        )
        return {str(r.id): (str(r.status), r.status_info) for r in rows}


def rpc_ports(agents: AgentProcess) -> dict[str, int]:
    """Agent id -> the TCP port of its RPC address."""
    return {agent_id: int(addr.rsplit(":", 1)[1]) for agent_id, addr in agents.agents.items()}


def agent_connections(agents: AgentProcess) -> dict[str, int]:
    """Agent id -> ESTABLISHED TCP connections the agent daemon holds on its RPC port."""
    ports = rpc_ports(agents)
    counts = dict.fromkeys(ports, 0)
    by_port = {port: agent_id for agent_id, port in ports.items()}
    for conn in psutil.Process(agents.pid).net_connections(kind="tcp"):
        if conn.status == psutil.CONN_ESTABLISHED and conn.laddr and conn.laddr.port in by_port:
            counts[by_port[conn.laddr.port]] += 1
    return counts


def connections_to(pids: Iterable[int], ports: Iterable[int]) -> dict[int, int]:
    """Remote port -> ESTABLISHED connections from these processes to it."""
    wanted = set(ports)
    counts = dict.fromkeys(wanted, 0)
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        for conn in conns:
            if conn.status == psutil.CONN_ESTABLISHED and conn.raddr and conn.raddr.port in wanted:
                counts[conn.raddr.port] += 1
    return counts


def pool_children(worker_pid: int) -> list[int]:
    """Process ids of a prefork worker's pool processes."""
    try:
        return [p.pid for p in psutil.Process(worker_pid).children()]
    except psutil.NoSuchProcess:
        return []


@asynccontextmanager
async def cluster_without_worker(
    tmp_path: Path,
    valkey_url: str,
    *,
    agents: int = 2,
    runtime: str = "sim",
    settings: Mapping[str, str] | None = None,
    **agent_kwargs: Any,
) -> AsyncIterator[Cluster]:
    """Like running_cluster, but the test starts and stops its workers itself."""
    senv = make_env(tmp_path, valkey_url, **dict(settings or {}))
    repo = SchedulerRepository(senv.engine)
    repo.add_image(ImageConfig(canonical=IMAGE))
    async with agent_process(
        senv.settings.redis_url, count=agents, id_prefix="a", runtime=runtime, **agent_kwargs
    ) as procs:
        redis: Redis = Redis.from_url(senv.settings.redis_url)
        try:
            await sync_agents(redis, OffloadedStore(repo))
        finally:
            await redis.aclose()
        yield Cluster(senv, create_app(senv.settings), repo, RunLedger(senv.engine), procs)
