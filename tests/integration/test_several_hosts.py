"""The documented several-machines recipe on PostgreSQL: two worker nodes, two beats, one Valkey.

The two "machines" share a host here, so each gets what a machine of its own would have:
its own SOKOVAN_VAR_DIR and its own host name in the worker's node name (`%h`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as sync_redis
from cryptography.fernet import Fernet

from sokovan.config import load_settings
from sokovan.db.engine import create_engine
from sokovan.db.repository import SchedulerRepository
from sokovan.db.stats import RunStats
from sokovan.types import KernelStatus, SessionId, SessionStatus
from tasks.app import create_app
from tests.agents import agent_process, set_fault
from tests.cluster import IMAGE, kernel_processes, kernel_rows
from tests.services import BIN
from tests.workers import ROOT, SchedulerEnv, WorkerProcess, stop_process, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MACHINES = ("host1", "host2")
# The page that holds the several-machines recipe.
RUNNING_PAGE = ROOT / "docs" / "operator" / "running.md"
SECRET = "pg-s3cr3t"


def recipe() -> tuple[list[str], list[str]]:
    """The running page's several-machines block: exported names, then the commands, as written."""
    text = RUNNING_PAGE.read_text().split("<!-- several-machines -->", 1)[1]
    match = re.search(r"```sh\n(.*?)```", text, re.S)
    assert match, f"{RUNNING_PAGE.relative_to(ROOT)} lost its several-machines recipe"
    lines = [line.strip() for line in match.group(1).splitlines() if line.strip()]
    exports = [line.split()[1].split("=", 1)[0] for line in lines if line.startswith("export ")]
    return exports, [line for line in lines if not line.startswith("export ")]


@contextmanager
def postgres(folder: Path) -> Iterator[str]:
    """A throwaway PostgreSQL server (pgserver); yields its SQLAlchemy URL."""
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about the runtime dir at import
        try:
            import pgserver
        except ImportError:
            pytest.fail("PostgreSQL tests need pgserver and psycopg: pip install -e '.[dev]'")
        server = pgserver.get_server(str(folder / "data"), cleanup_mode="stop")
    try:
        yield server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        server.cleanup()


def machine(tmp_path: Path, name: str, shared: dict[str, str]) -> SchedulerEnv:
    """What one machine has: the shared settings, a var dir of its own, the tools on PATH."""
    var_dir = tmp_path / name
    var_dir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOKOVAN_")}
    env.update(shared, SOKOVAN_VAR_DIR=str(var_dir), PYTHONUNBUFFERED="1")
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", PYTHONPATH=str(ROOT))
    settings = load_settings(env, dotenv=None)
    return SchedulerEnv(env, settings, create_engine(settings.effective_database_url), var_dir)


def run(command: str, host: str, senv: SchedulerEnv) -> str:
    """One recipe line through a shell on `host`."""
    done = subprocess.run(
        ["bash", "-c", command.replace("%h", host)], cwd=ROOT, env=senv.env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (command, done.stderr[-2000:])
    return done.stdout


@contextmanager
def daemon(command: str, host: str, senv: SchedulerEnv, ready: str) -> Iterator[WorkerProcess]:
    """A long-running recipe line on `host`, until the block ends."""
    role = command.split()[3]
    log = senv.var_dir / f"{role}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {command.replace('%h', host)}"], cwd=ROOT, env=senv.env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    process = WorkerProcess(proc, log, f"{role}@{host}")

    def started() -> bool:
        assert proc.poll() is None, process.output()[-3000:]
        return ready in process.output()

    try:
        wait_for(started, 90, what=f"{role} on {host}")
        yield process
    finally:
        stop_process(proc)


@dataclass
class Machines:
    hosts: dict[str, SchedulerEnv]
    nodes: dict[str, WorkerProcess]
    beats: dict[str, WorkerProcess]
    redis_url: str

    @property
    def one(self) -> SchedulerEnv:
        return self.hosts[MACHINES[0]]


async def start_machines(stack: AsyncExitStack, tmp_path: Path, valkey_url: str) -> Machines:
    """PostgreSQL, reference agents, and each machine's worker and beat from the recipe."""
    exports, (upgrade, worker_cmd, beat_cmd) = recipe()
    assert exports == [
        "SOKOVAN_REDIS_URL", "SOKOVAN_DATABASE_URL", "SOKOVAN_SECRET_KEY", "SOKOVAN_VAR_DIR",
    ]  # fmt: skip
    redis_url = f"{valkey_url.rsplit('/', 1)[0]}/14"
    sync_redis.Redis.from_url(redis_url).flushdb()
    shared = {
        "SOKOVAN_REDIS_URL": redis_url,
        "SOKOVAN_DATABASE_URL": stack.enter_context(postgres(tmp_path / "pg")),
        "SOKOVAN_SECRET_KEY": Fernet.generate_key().decode(),
        # Short ticks and a short stale threshold keep the test brief.
        "SOKOVAN_LAUNCH_INTERVAL": "2",
        "SOKOVAN_TERMINATE_INTERVAL": "2",
        "SOKOVAN_SWEEP_INTERVAL": "2",
        "SOKOVAN_PRESENCE_STALE_AFTER": "4",
        "SOKOVAN_AGENT_CALL_TIMEOUT": "5",
    }
    hosts = {name: machine(tmp_path, name, shared) for name in MACHINES}
    for senv in hosts.values():
        stack.callback(senv.engine.dispose)  # before the server stops
    first = hosts[MACHINES[0]]
    run(upgrade, MACHINES[0], first)
    run(f"sokovan image add {IMAGE}", MACHINES[0], first)
    await stack.enter_async_context(
        agent_process(redis_url, count=2, id_prefix="a", runtime="process", presence_interval=0.5)
    )
    run("sokovan agents sync", MACHINES[0], first)
    nodes = {h: stack.enter_context(daemon(worker_cmd, h, e, " ready.")) for h, e in hosts.items()}
    beats = {
        h: stack.enter_context(daemon(beat_cmd, h, e, "beat: Starting")) for h, e in hosts.items()
    }
    return Machines(hosts, nodes, beats, redis_url)


def wait_session(repo: SchedulerRepository, sid: SessionId, status: SessionStatus) -> None:
    wait_for(lambda: repo.get_session(sid).status == status, 120, what=f"{sid} {status}")


async def test_two_machines_two_beats_launch_terminate_and_sweep_on_postgres(
    tmp_path: Path, valkey_url: str
) -> None:
    """Two worker nodes and two beats on PostgreSQL and one Valkey, set up as the running page says.

    Given both machines running the recipe's worker and beat, reference agents a1 and a2,
    when three 2-kernel multi-node sessions and one 1-kernel session are created from
    host1, the single kernel dies silently, and the others are terminated from host2,
    then all reach RUNNING, the dead kernel is reaped by a beat's sweep (STALE_KERNEL),
    the rest end TERMINATED with exact per-session counts, and both nodes and both beats
    took part. Then one node is SIGKILLed (whole tree) mid-termination and not restarted:
    the other finishes, every kernel destroyed and counted once."""
    async with AsyncExitStack() as stack:
        m = await start_machines(stack, tmp_path, valkey_url)
        app = create_app(m.one.settings)
        stack.callback(app.close)
        wait_for(
            lambda: (
                {next(iter(r)) for r in app.control.ping(timeout=1.0)}
                == {f"worker@{h}" for h in MACHINES}
            ),
            30,
            what="both worker nodes to answer",
        )
        repo = SchedulerRepository(m.one.engine)
        multi = ("--kernels", "2", "--cluster-mode", "multi-node", "--env", f"API_TOKEN={SECRET}")
        cluster = [create(m.one, *multi) for _ in range(3)]
        lone = create(m.one)
        for sid in [*cluster, lone]:
            wait_session(repo, sid, SessionStatus.RUNNING)
        for kernel in repo.get_session(cluster[0]).kernels:  # secrets at rest on PostgreSQL
            [proc] = kernel_processes(str(kernel.id))
            assert proc.environ()["API_TOKEN"] == SECRET
        assert "API_TOKEN" not in repo.get_session(cluster[0]).environ
        await kill_silently(repo, lone, m.redis_url)
        wait_session(repo, lone, SessionStatus.TERMINATED)
        [victim] = repo.get_session(lone).kernels
        assert kernel_rows(m.one, [victim.id])[str(victim.id)] == ("TERMINATED", "STALE_KERNEL")
        for sid in cluster:
            run(f"sokovan session terminate {sid}", MACHINES[1], m.hosts[MACHINES[1]])
        for sid in cluster:
            wait_session(repo, sid, SessionStatus.TERMINATED)
            kernels = repo.get_session(sid).kernels
            assert all(k.status == KernelStatus.TERMINATED for k in kernels)
            assert all(kernel_processes(str(k.id)) == [] for k in kernels)
        stats = {
            s.session_id: s for s in RunStats(m.one.engine).sessions([str(s) for s in cluster])
        }
        for sid in cluster:
            counted = stats[str(sid)]
            assert (counted.created, counted.destroyed, counted.failed) == (2, 2, 0), counted
        for name in MACHINES:
            assert " received" in m.nodes[name].output(), f"worker on {name} took no task"
            assert "Sending due task" in m.beats[name].output(), f"beat on {name} sent nothing"
        with m.one.engine.connect() as conn:
            assert conn.dialect.name == "postgresql"
        await one_node_dies_the_other_finishes(m, repo, multi[:4])


DESTROY_RECEIVED = "sokovan.agent.destroy_kernels["


async def one_node_dies_the_other_finishes(
    m: Machines, repo: SchedulerRepository, shape: tuple[str, ...]
) -> None:
    """A node is SIGKILLed (whole tree, no restart) while its destroy batch hangs on an
    agent: the other node finishes the run's work and each kernel is counted once."""
    more = [create(m.one, *shape) for _ in range(2)]
    for sid in more:
        wait_session(repo, sid, SessionStatus.RUNNING)
    for agent in ("a1", "a2"):
        await set_fault(
            m.redis_url, agent, {"op": "hang", "method": "destroy_kernel", "seconds": 8}
        )
    seen = {h: m.nodes[h].output().count(DESTROY_RECEIVED) for h in MACHINES}
    for sid in more:  # sent without waiting: its destroy hangs on purpose
        run(f"sokovan session terminate {sid} --wait 0", MACHINES[1], m.hosts[MACHINES[1]])

    def busy() -> list[str]:
        return [h for h in MACHINES if m.nodes[h].output().count(DESTROY_RECEIVED) > seen[h]]

    wait_for(busy, 60, what="a node to take a destroy batch")
    doomed, survivor = busy()[0], next(h for h in MACHINES if h != busy()[0])
    os.killpg(m.nodes[doomed].proc.pid, signal.SIGKILL)
    m.nodes[doomed].proc.wait(10)
    for agent in ("a1", "a2"):
        await set_fault(m.redis_url, agent, {"op": "clear"})
    for sid in more:
        wait_session(repo, sid, SessionStatus.TERMINATED)
        assert all(kernel_processes(str(k.id)) == [] for k in repo.get_session(sid).kernels)
    stats = {s.session_id: s for s in RunStats(m.one.engine).sessions([str(s) for s in more])}
    for sid in more:
        counted = stats[str(sid)]
        assert (counted.created, counted.destroyed, counted.failed) == (2, 2, 0), counted
    assert m.nodes[survivor].proc.poll() is None


async def kill_silently(repo: SchedulerRepository, sid: SessionId, redis_url: str) -> None:
    """The session's one kernel process dies and its agent stops refreshing its presence."""
    [victim] = repo.get_session(sid).kernels
    assert victim.agent_id is not None
    await set_fault(
        redis_url, victim.agent_id, {"op": "stop_presence", "kernels": [str(victim.id)]}
    )
    [proc] = kernel_processes(str(victim.id))
    proc.kill()


def create(senv: SchedulerEnv, *args: str) -> SessionId:
    out = run(f"sokovan session create --image {IMAGE} {' '.join(args)}", MACHINES[0], senv)
    return SessionId(uuid.UUID(out.split()[1]))
