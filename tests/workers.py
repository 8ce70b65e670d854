"""Real Celery worker (and beat) processes for integration tests."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from sokovan.config import Settings, load_settings
from sokovan.db.engine import create_engine, upgrade
from tasks.commands import beat_args, worker_args

ROOT = Path(__file__).resolve().parents[1]
_db_index = itertools.count(1)


@dataclass
class SchedulerEnv:
    """Settings, environment variables and a migrated database for one test."""

    env: dict[str, str]
    settings: Settings
    engine: sa.Engine
    var_dir: Path


def make_env(tmp_path: Path, valkey_url: str, **overrides: str) -> SchedulerEnv:
    """A fresh Redis database index, a migrated SQLite file and SOKOVAN_* variables."""
    base = valkey_url.rsplit("/", 1)[0]
    redis_url = f"{base}/{next(_db_index) % 15 + 1}"
    var_dir = tmp_path / "var"
    var_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOKOVAN_")}
    env.update(
        SOKOVAN_REDIS_URL=redis_url,
        SOKOVAN_EMBEDDED_VALKEY="false",
        SOKOVAN_VAR_DIR=str(var_dir),
        SOKOVAN_DATABASE_URL=f"sqlite:///{var_dir / 'sokovan.db'}",
        SOKOVAN_AGENT_CALL_TIMEOUT="5",
        # No keys made ahead of demand unless a test asks: a refill would take the CPU.
        SOKOVAN_KEYPAIR_POOL_SIZE="0",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    env.update({f"SOKOVAN_{k.upper()}": v for k, v in overrides.items()})
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_url).flushdb()
    settings = load_settings(env, dotenv=None)
    engine = create_engine(settings.effective_database_url)
    upgrade(engine)
    return SchedulerEnv(env=env, settings=settings, engine=engine, var_dir=var_dir)


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    name: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _wait_ready(worker: WorkerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{worker.output()[-4000:]}")
        if " ready." in worker.output():
            return
        time.sleep(0.2)
    raise RuntimeError(f"worker not ready in {timeout}s:\n{worker.output()[-4000:]}")


@contextmanager
def celery_worker(
    senv: SchedulerEnv,
    concurrency: int = 1,
    pool: str = "prefork",
    timeout: float = 60.0,
    loglevel: str = "INFO",
    extra_args: Sequence[str] = (),
    node: str | None = None,
) -> Iterator[WorkerProcess]:
    """A `celery worker` subprocess on the test's broker; stopped (SIGTERM, then SIGKILL) after.

    `node` names it (a restart under the same name); by default each worker gets its own."""
    name = node or f"test-{uuid.uuid4().hex[:8]}@localhost"
    log = senv.var_dir / f"worker-{name.split('@')[0]}-{uuid.uuid4().hex[:4]}.log"
    cmd = [
        sys.executable,
        "-m",
        "celery",
        *worker_args(concurrency=concurrency, node=name, loglevel=loglevel),
        "-P",
        pool,
        "--without-gossip",
        "--without-mingle",
        *extra_args,
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
    worker = WorkerProcess(proc, log, name)
    try:
        _wait_ready(worker, timeout)
        yield worker
    finally:
        stop_process(proc)


@contextmanager
def celery_beat(senv: SchedulerEnv) -> Iterator[subprocess.Popen[bytes]]:
    """A `celery beat` subprocess on the test's settings; stopped after."""
    log = senv.var_dir / f"beat-{uuid.uuid4().hex[:8]}.log"
    schedule = senv.var_dir / f"beat-schedule-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "celery", *beat_args(schedule)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=senv.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM the process group, SIGKILL it after `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def wait_for(
    predicate: object, timeout: float = 60.0, interval: float = 0.2, what: str = ""
) -> None:
    """Polls `predicate()` until it is truthy; fails with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
