"""SC-CV-006: the embedded Valkey of `sokovan up` keeps queued work across a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis as sync_redis

from sokovan.db.listing import list_sessions
from sokovan.db.repository import SchedulerRepository
from sokovan.types import ImageConfig
from tasks.app import create_app
from tasks.commands import QUEUE
from tests.conftest import free_port
from tests.workers import ROOT, celery_worker, make_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

IMAGE = "cr.backend.ai/stable/python:3.12-ubuntu22.04"
SESSIONS = 5


@contextmanager
def sokovan_valkey(var_dir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`sokovan valkey` as `sokovan up` starts it, in a process group of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOKOVAN_")}
    env.update(SOKOVAN_VAR_DIR=str(var_dir), PYTHONPATH=str(ROOT))
    exe = Path(sys.executable).parent / "sokovan"
    with (var_dir / "valkey-run.log").open("ab") as log:
        proc = subprocess.Popen(
            [str(exe), "valkey", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        client = sync_redis.Redis(port=port)
        wait_for(lambda: _answers(client), timeout=30, what="the embedded Valkey answering")
        client.close()
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _answers(client: sync_redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except sync_redis.ConnectionError:
        return False


def test_sc_cv_006_tasks_queued_survive_a_killed_embedded_valkey(tmp_path: Path) -> None:
    """SC-CV-006.

    Given the embedded Valkey as `sokovan up` runs it (its data under SOKOVAN_VAR_DIR) and
    no worker running, when session-create tasks are queued and the Valkey's whole process
    group is SIGKILLed and started again on the same data directory, the tasks are still
    queued, and a worker started afterwards runs them: every session is stored."""
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    port = free_port()
    with sokovan_valkey(var_dir, port) as first:
        senv = make_env(tmp_path / "scheduler", f"redis://127.0.0.1:{port}/0")
        SchedulerRepository(senv.engine).add_image(ImageConfig(canonical=IMAGE))
        app = create_app(senv.settings)
        for _ in range(SESSIONS):
            app.send_task("sokovan.session.create", kwargs={"request": {"image": IMAGE}})
        client = sync_redis.Redis.from_url(senv.settings.redis_url)
        assert client.llen(QUEUE) == SESSIONS
        client.close()
        assert (var_dir / "valkey").is_dir()
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    with sokovan_valkey(var_dir, port):
        client = sync_redis.Redis.from_url(senv.settings.redis_url)
        assert client.llen(QUEUE) == SESSIONS, "the queued tasks did not survive the kill"
        client.close()
        assert list_sessions(senv.engine).total == 0
        with celery_worker(senv, concurrency=1):
            wait_for(
                lambda: list_sessions(senv.engine).total == SESSIONS,
                timeout=60,
                what=f"{SESSIONS} sessions stored by the worker",
            )
