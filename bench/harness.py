"""What the benchmarks stand up: a private Valkey, many reference agents, a real Celery worker.

Each benchmark gets its own Valkey server (so INFO commandstats counts only its traffic),
a migrated SQLite file, reference agents spread over host processes (`--count N` each, at
most AGENTS_PER_HOST per process) and, when asked, one `celery worker` subprocess whose
process tree is sampled for its peak RSS and open file descriptors.
"""

from __future__ import annotations

import asyncio
import platform
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis as sync_redis
import sqlalchemy as sa
from celery import Celery
from redis.asyncio import Redis

from sokovan.constants import AGENT_CALL_TIMEOUT_SEC
from sokovan.db.ledger import RunLedger
from sokovan.db.offload import OffloadedStore
from sokovan.db.repository import SchedulerRepository
from sokovan.db.schema import kernels, sessions
from sokovan.embedded import EmbeddedValkey
from sokovan.scheduler.agents import sync_agents
from sokovan.types import AgentId, ImageConfig, KernelStatus, SessionStatus, utcnow
from tasks.app import create_app
from tests.agents import AgentProcess, agent_process
from tests.workers import SchedulerEnv, WorkerProcess, celery_worker, make_env

IMAGE = "cr.backend.ai/stable/python:3.12-ubuntu22.04"
SLOTS = {"cpu": "1", "mem": "1073741824"}
# Enough capacity that placement never refuses a benchmark's sessions.
AGENT_CAPACITY = ["--cpu", "100000", "--mem", "100000g"]
# Reference agents per host process: each agent's RPC socket brings its own ZeroMQ context
# (threads and descriptors), so 5,000 agents in one process pass the per-process file limit.
AGENTS_PER_HOST = 1000


@dataclass(frozen=True, slots=True)
class Figure:
    """One row of the results table."""

    name: str
    ours: float
    baseline: float
    unit: str
    # "lower" when a smaller number is better (times), "higher" for rates.
    better: str = "lower"
    note: str = ""

    failed: bool = False

    @property
    def ratio(self) -> float:
        """ours / baseline."""
        return self.ours / self.baseline if self.baseline else float("nan")

    @classmethod
    def failure(cls, name: str, error: BaseException) -> Figure:
        """The row of a benchmark that could not finish: no figure, and why."""
        message = " ".join(f"{type(error).__name__}: {error}".split())[:400]
        nan = float("nan")
        return cls(f"{name}: FAILED", nan, nan, "-", note=message, failed=True)


def lost_note(side: str, lost: int, total: int, what: str, why: str = "") -> str:
    """`baseline lost 5,084 of 10,000 destroy calls to the 30 s timeout`, or none lost."""
    if not lost:
        return f"{side} lost none of {total:,} {what}"
    return f"{side} lost {lost:,} of {total:,} {what}" + (f" {why}" if why else "")


def timeout_split(errors: Sequence[str]) -> tuple[int, int]:
    """How many of the errors were timeouts, and how many were something else."""
    # The agent client says "<method> got no reply in 30s" when a call's timeout runs out.
    said = ("timeout", "timed out", "no reply in")
    timeouts = sum(1 for e in errors if any(w in e.lower() for w in said))
    return timeouts, len(errors) - timeouts


@dataclass(frozen=True)
class AgentHosts:
    """Reference agents spread over one or more host processes."""

    processes: tuple[AgentProcess, ...]

    @property
    def ids(self) -> list[str]:
        return [agent_id for proc in self.processes for agent_id in proc.ids]

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.processes]

    def addr(self, agent_id: str) -> str:
        """The RPC address of an agent, whichever process serves it."""
        for proc in self.processes:
            if agent_id in proc.agents:
                return proc.agents[agent_id]
        raise KeyError(agent_id)


def host_prefixes(agents: int, per_host: int = AGENTS_PER_HOST) -> list[tuple[str, int]]:
    """(id prefix, count) per host process: `a1..aN` in one process, `h1a1..` over several."""
    if agents <= per_host:
        return [("a", agents)]
    hosts = -(-agents // per_host)
    base, extra = divmod(agents, hosts)
    return [(f"h{k + 1}a", base + (1 if k < extra else 0)) for k in range(hosts)]


@asynccontextmanager
async def agent_hosts(
    redis_url: str,
    agents: int,
    latency: Mapping[str, float] | None,
    presence_interval: float,
    per_host: int = AGENTS_PER_HOST,
) -> AsyncIterator[AgentHosts]:
    """`agents` reference agents in as many host processes as AGENTS_PER_HOST asks, started
    together and stopped together."""
    async with AsyncExitStack() as exits:

        async def one(prefix: str, count: int) -> AgentProcess:
            return await exits.enter_async_context(
                agent_process(
                    redis_url,
                    count=count,
                    id_prefix=prefix,
                    runtime="sim",
                    latency=latency,
                    presence_interval=presence_interval,
                    extra_args=[*AGENT_CAPACITY, "--log-level", "WARNING"],
                    ready_timeout=120.0 + agents / 50,
                )
            )

        # One after the other: entering an exit stack from concurrent tasks would unwind them
        # out of order. Each start is mostly the agents' own binding and a ping round.
        procs = [await one(prefix, count) for prefix, count in host_prefixes(agents, per_host)]
        yield AgentHosts(tuple(procs))


@dataclass
class Stack:
    """A running scheduler for one benchmark."""

    senv: SchedulerEnv
    agents: AgentHosts
    app: Celery
    repo: SchedulerRepository
    ledger: RunLedger
    worker: WorkerProcess | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def redis_url(self) -> str:
        return self.senv.settings.redis_url

    @property
    def agent_ids(self) -> list[AgentId]:
        return [AgentId(a) for a in self.agents.ids]


@asynccontextmanager
async def stack(
    *,
    agents: int,
    latency: Mapping[str, float] | None = None,
    worker_concurrency: int = 2,
    presence_interval: float = 3600.0,
    settings: Mapping[str, str] | None = None,
    with_worker: bool = True,
) -> AsyncIterator[Stack]:
    """Valkey, SQLite, `agents` reference agents over host processes and (optionally) one
    worker."""
    async with AsyncExitStack() as exits:
        tmp = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="sokovan-bench-")))
        valkey = EmbeddedValkey(tmp / "valkey", persist=False)
        url = valkey.start()
        exits.callback(valkey.stop)
        # The product's own call timeout, not the tests' short one, unless a flag says so.
        chosen = {"agent_call_timeout": str(AGENT_CALL_TIMEOUT_SEC), **dict(settings or {})}
        senv = make_env(tmp, url, **chosen)
        exits.callback(senv.engine.dispose)
        repo = SchedulerRepository(senv.engine)
        repo.add_image(ImageConfig(canonical=IMAGE))
        procs = await exits.enter_async_context(
            agent_hosts(senv.settings.redis_url, agents, latency, presence_interval)
        )
        redis: Redis = Redis.from_url(senv.settings.redis_url)
        try:
            await sync_agents(redis, OffloadedStore(repo))
        finally:
            await redis.aclose()
        worker = None
        if with_worker:
            worker = exits.enter_context(celery_worker(senv, concurrency=worker_concurrency))
        yield Stack(senv, procs, create_app(senv.settings), repo, RunLedger(senv.engine), worker)


def bulk_sessions(
    engine: sa.Engine,
    agent_ids: Sequence[AgentId],
    count: int,
    status: SessionStatus,
    kernel_status: KernelStatus,
) -> list[tuple[uuid.UUID, uuid.UUID, AgentId]]:
    """Inserts `count` one-kernel sessions round-robin over the agents; (session, kernel, agent)."""
    now = utcnow()
    made: list[tuple[uuid.UUID, uuid.UUID, AgentId]] = []
    first = 0
    if engine.dialect.name == "sqlite" and count > 5000:
        first = 1  # the first goes through SQLAlchemy; the rest are copies of its stored rows
    through = first or count
    for start in range(0, through, 5000):
        srows: list[dict[str, Any]] = []
        krows: list[dict[str, Any]] = []
        for i in range(start, min(through, start + 5000)):
            sid, kid, agent = uuid.uuid4(), uuid.uuid4(), agent_ids[i % len(agent_ids)]
            made.append((sid, kid, agent))
            srows.append(
                {
                    "id": sid,
                    "name": f"bench-{i}",
                    "status": str(status),
                    "status_data": {},
                    "user_uuid": uuid.UUID(int=0),
                    "environ": {},
                    "created_at": now,
                    "status_changed_at": now,
                }
            )
            krows.append(
                {
                    "id": kid,
                    "session_id": sid,
                    "agent_id": agent,
                    "status": str(kernel_status),
                    "status_data": {},
                    "image": IMAGE,
                    "requested_slots": SLOTS,
                    "occupied_slots": SLOTS,
                    "created_at": now,
                    "status_changed_at": now,
                }
            )
        with engine.begin() as conn:
            conn.execute(sessions.insert(), srows)
            conn.execute(kernels.insert(), krows)
    if first:
        made += _copied_sessions(engine, agent_ids, made[0], first, count)
    return made


def _copied_sessions(
    engine: sa.Engine,
    agent_ids: Sequence[AgentId],
    template: tuple[uuid.UUID, uuid.UUID, AgentId],
    start: int,
    count: int,
) -> list[tuple[uuid.UUID, uuid.UUID, AgentId]]:
    """Sessions `start`..`count` as copies of the template's rows as SQLite stores them, with
    their own ids, names and agents: a million take seconds, not minutes of type processing."""
    sid, kid, _ = template
    made: list[tuple[uuid.UUID, uuid.UUID, AgentId]] = []
    with engine.begin() as conn:
        raw = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        srow = list(raw.execute("SELECT * FROM sessions WHERE id = ?", (sid.hex,)).fetchone())
        scols = [d[0] for d in raw.description]
        krow = list(raw.execute("SELECT * FROM kernels WHERE id = ?", (kid.hex,)).fetchone())
        kcols = [d[0] for d in raw.description]
        s_id, s_name = scols.index("id"), scols.index("name")
        k_id, k_session, k_agent = (
            kcols.index("id"),
            kcols.index("session_id"),
            kcols.index("agent_id"),
        )
        sql_s = f"INSERT INTO sessions ({', '.join(scols)}) VALUES ({', '.join('?' * len(scols))})"
        sql_k = f"INSERT INTO kernels ({', '.join(kcols)}) VALUES ({', '.join('?' * len(kcols))})"
        for begin in range(start, count, 50_000):
            srows, krows = [], []
            for i in range(begin, min(count, begin + 50_000)):
                sid, kid, agent = uuid.uuid4(), uuid.uuid4(), agent_ids[i % len(agent_ids)]
                made.append((sid, kid, agent))
                srow[s_id], srow[s_name] = sid.hex, f"bench-{i}"
                krow[k_id], krow[k_session], krow[k_agent] = kid.hex, sid.hex, agent
                srows.append(tuple(srow))
                krows.append(tuple(krow))
            raw.executemany(sql_s, srows)
            raw.executemany(sql_k, krows)
    return made


def set_statuses(
    engine: sa.Engine, session_status: SessionStatus, kernel_status: KernelStatus
) -> None:
    """Puts every session and kernel back in one status (between rounds)."""
    with engine.begin() as conn:
        conn.execute(
            sessions.update().values(
                status=str(session_status), status_info=None, terminated_at=None
            )
        )
        conn.execute(
            kernels.update().values(status=str(kernel_status), status_info=None, terminated_at=None)
        )


def count_kernels(engine: sa.Engine, status: KernelStatus) -> int:
    with engine.connect() as conn:
        query = (
            sa.select(sa.func.count()).select_from(kernels).where(kernels.c.status == str(status))
        )
        return int(conn.execute(query).scalar() or 0)


def count_sessions(engine: sa.Engine, status: SessionStatus) -> int:
    with engine.connect() as conn:
        query = (
            sa.select(sa.func.count()).select_from(sessions).where(sessions.c.status == str(status))
        )
        return int(conn.execute(query).scalar() or 0)


async def wait_until(
    predicate: Callable[[], bool], limit: float, interval: float = 0.05, what: str = ""
) -> float:
    """Polls `predicate` off the loop; returns the monotonic time it first held."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return time.monotonic()
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {limit}s waiting for {what or predicate}")


def commandstats(redis_url: str) -> dict[str, int]:
    """Calls per Redis command since the server started (INFO commandstats)."""
    client = sync_redis.Redis.from_url(redis_url)
    try:
        info: dict[str, Any] = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


def stats_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


class RssSampler:
    """Samples RSS and open file descriptors of a process tree in a thread; keeps the peaks."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self._root = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self.peak = 0  # the whole tree
        self.peak_process = 0  # the largest single process of the tree
        self.peak_fds = 0  # open descriptors, the whole tree
        self.peak_fds_process = 0  # open descriptors, the process holding most

    def sample(self) -> int:
        total = fds = 0
        for proc in _tree(self._root):
            try:
                rss = int(proc.memory_info().rss)
                opened = proc.num_fds()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            fds += opened
            self.peak_process = max(self.peak_process, rss)
            self.peak_fds_process = max(self.peak_fds_process, opened)
        self.peak = max(self.peak, total)
        self.peak_fds = max(self.peak_fds, fds)
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def note(self) -> str:
        """`worker peak RSS 310 MiB tree, 140 MiB largest process; 212 fds tree, 90 largest`."""
        return (
            f"worker peak RSS {mib(self.peak):.0f} MiB tree, {mib(self.peak_process):.0f} MiB "
            f"largest process; peak open fds {self.peak_fds} tree, "
            f"{self.peak_fds_process} largest process"
        )


def tasks_sent(before: Mapping[str, int], after: Mapping[str, int]) -> int:
    """Celery messages published between two commandstats (kombu's Redis transport LPUSHes
    each one onto its queue)."""
    return after.get("lpush", 0) - before.get("lpush", 0)


def _tree(root: psutil.Process) -> Iterable[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def mib(n: float) -> float:
    return n / (1024 * 1024)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, for the results."""
    one, five, fifteen = psutil.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} (1, 5, 15 min)"


def machine() -> str:
    """A one-line description of this machine."""
    freq = psutil.cpu_freq()
    mhz = f" @ {freq.max or freq.current:.0f} MHz" if freq else ""
    cpu = platform.processor() or platform.machine()
    mem = psutil.virtual_memory().total / 2**30
    return (
        f"{psutil.cpu_count()} cores ({cpu}{mhz}), {mem:.0f} GiB, "
        f"Python {platform.python_version()}, load avg {psutil.getloadavg()[0]:.1f}"
    )


def print_figures(title: str, figures: Sequence[Figure]) -> None:
    print(f"\n{title}")
    print(f"{'figure':<44}{'ours':>12}{'baseline':>12}{'ours/base':>11}")
    for f in figures:
        if f.failed:
            print(f"{f.name:<44}{'-':>12}{'-':>12}{'-':>11}")
        else:
            print(f"{f.name:<44}{f.ours:>12.3f}{f.baseline:>12.3f}{f.ratio:>11.2f}  {f.unit}")
        if f.note:
            print(f"    {f.note}")
    print(f"    {load_average()}")
