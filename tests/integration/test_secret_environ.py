"""User secrets in a session's environment reach the kernel and nothing else.

Real worker (DEBUG log), real beat (DEBUG log), Flower on the same broker, two reference
agents with the `process` runtime, and a MONITOR tap on the Valkey server that sees every
command any process sends it.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest
import redis as sync_redis
from celery import Celery
from celery.exceptions import NotRegistered

from sokovan.redaction import is_secret_ref
from sokovan.signing_files import create_signing_files
from sokovan.types import SessionId, SessionStatus
from tasks.api import Scheduler
from tasks.app import create_app
from tests.cluster import IMAGE, Cluster, cluster_without_worker, kernel_processes
from tests.services import (
    Flower,
    MonitorTap,
    celery_beat,
    flower_process,
    leaks,
    redis_dump,
    run_cli,
    sql_rows,
    wait_quiet,
)
from tests.workers import celery_worker, make_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SECRET = "s3cr3t-value"
DECLARED = "declared-s3cr3t"


def _assert_nowhere_in_redis(c: Cluster, secret: str) -> None:
    dump = redis_dump(c.senv.settings.redis_url)
    assert any(k.startswith(b"celery-task-meta-") for k in dump), "no task result read"
    leaked = [k for k, values in dump.items() if any(leaks(v, secret) for v in values)]
    assert leaked == [], f"secret in Redis keys {leaked}"


def _assert_not_in_flower(flower: Flower, secret: str) -> list[str]:
    status, body = flower.get("/api/tasks")
    assert status == 200 and not leaks(body, secret)
    tasks = flower.json("/api/tasks")
    for task_id in tasks:
        status, info = flower.get(f"/api/task/info/{task_id}")
        assert status == 200 and not leaks(info, secret), task_id
    return [t["name"] for t in tasks.values()]


def _assert_not_in_sql(c: Cluster, secret: str) -> None:
    assert not [r for r in sql_rows(c.senv.engine) if leaks(r, secret)]
    for path in c.senv.var_dir.glob("sokovan.db*"):
        assert not leaks(path.read_bytes(), secret), path


@pytest.mark.parametrize("signed", [False, True], ids=["plain", "signed"])
async def test_cli_secret_reaches_the_kernel_and_nothing_else(
    tmp_path: Path, valkey_url: str, signed: bool
) -> None:
    """A launch through the CLI with --env API_TOKEN=s3cr3t-value (and a declared secret).

    Given a worker and beat logging at DEBUG, Flower and a MONITOR tap on Valkey,
    when a 2-kernel multi-node session is created with two secret variables and a clear
    one, then terminated, the secret values are in no command Valkey executed (so in no
    message, event or result), no key (DUMP, during and after), no Flower answer, no log
    line, no task result and not in clear in SQL, while each kernel process has them.
    The same holds on a cluster whose task messages are signed."""
    settings = {"launch_interval": "2", "terminate_interval": "2", "sweep_interval": "3"}
    if signed:
        settings["task_signing_dir"] = str(create_signing_files(tmp_path / "signing").key.parent)
    async with cluster_without_worker(
        tmp_path, valkey_url, runtime="process", settings=settings
    ) as c:
        tap = MonitorTap(c.senv.settings.redis_url)
        tap.start()
        with (
            flower_process(c.senv) as flower,
            celery_worker(c.senv, concurrency=2, loglevel="DEBUG") as worker,
            celery_beat(c.senv, loglevel="DEBUG") as beat,
        ):
            out = run_cli(
                c.senv, "session", "create", "--image", IMAGE, "--kernels", "2",
                "--cluster-mode", "multi-node", "--env", f"API_TOKEN={SECRET}",
                "--env", "PLAIN=visible", "--secret-env", f"DATABASE_URL={DECLARED}",
            )  # fmt: skip
            sid = SessionId(uuid.UUID(out.split()[1]))
            session = c.wait_status(sid, SessionStatus.RUNNING)
            assert len({k.agent_id for k in session.kernels}) == 2
            for kernel in session.kernels:
                [proc] = kernel_processes(str(kernel.id))
                env = proc.environ()
                assert env["API_TOKEN"] == SECRET and env["DATABASE_URL"] == DECLARED
                assert env["PLAIN"] == "visible"
            assert session.environ == {"PLAIN": "visible"}
            for secret in (SECRET, DECLARED):
                _assert_nowhere_in_redis(c, secret)
            wait_for(
                lambda: "sokovan.agent.create_kernels" in _assert_not_in_flower(flower, SECRET),
                30,
                what="Flower to see the create_kernels tasks",
            )
            run_cli(c.senv, "session", "terminate", str(sid))
            c.wait_status(sid, SessionStatus.TERMINATED)
            wait_quiet(4)  # a sweep tick and the last events and acks
            for secret in (SECRET, DECLARED):
                _assert_not_in_flower(flower, secret)
                _assert_nowhere_in_redis(c, secret)
        tap.stop()
        assert any("session.create" in cmd for cmd in tap.commands), "the tap saw nothing"
        for secret in (SECRET, DECLARED):
            assert not [cmd for cmd in tap.commands if leaks(cmd, secret)]
            for log in (worker.log, beat.log, flower.log):
                assert not leaks(log.read_bytes(), secret), log
            _assert_not_in_sql(c, secret)
        assert "DEBUG" in worker.output() and "DEBUG" in beat.output()


async def test_raw_send_task_secret_goes_no_further_than_its_message(
    tmp_path: Path, valkey_url: str
) -> None:
    """A manager's own send_task with the secret inline: only its message carries it.

    The submission (its LPUSH, its task-sent event, the broker's unacked copy of it) holds
    the value; no task, event, result, log line, key left after, or SQL row does. A
    message for a task the worker does not have is refused without its body logged."""
    async with cluster_without_worker(tmp_path, valkey_url, runtime="process") as c:
        tap = MonitorTap(c.senv.settings.redis_url)
        tap.start()
        with celery_worker(c.senv, concurrency=2, loglevel="DEBUG") as worker:
            manager = Celery(broker=c.senv.settings.redis_url, backend=c.senv.settings.redis_url)
            manager.conf.task_send_sent_event = True
            request = {"image": IMAGE, "environ": {"API_TOKEN": SECRET}}
            sent = manager.send_task(
                "sokovan.session.create", kwargs={"request": request}, queue="sokovan"
            )
            answer = sent.get(timeout=60)
            unknown = manager.send_task(
                "sokovan.no.such.task", kwargs={"token": SECRET}, queue="sokovan"
            )
            with pytest.raises(NotRegistered):
                unknown.get(timeout=30)
            sid = SessionId(uuid.UUID(answer["session_id"]))
            [kernel] = c.wait_status(sid, SessionStatus.RUNNING).kernels
            [proc] = kernel_processes(str(kernel.id))
            assert proc.environ()["API_TOKEN"] == SECRET
            c.send("sokovan.session.terminate", session_id=str(sid))
            c.wait_status(sid, SessionStatus.TERMINATED)
            wait_quiet(2)
            _assert_nowhere_in_redis(c, SECRET)
        tap.stop()
        carrying = [cmd for cmd in tap.commands if leaks(cmd, SECRET)]
        assert carrying, "the submission itself should carry the value"
        for cmd in carrying:
            verb = cmd.split(" ", 1)[0].upper()
            assert leaks(cmd, sent.id) or leaks(cmd, unknown.id), cmd[:300]
            assert verb in {"LPUSH", "HSET", "PUBLISH"}, cmd[:300]
            if verb == "PUBLISH":
                assert leaks(cmd, "task-sent"), cmd[:300]
        assert not leaks(worker.log.read_bytes(), SECRET)
        [refusal] = [line for line in worker.output().splitlines() if unknown.id in line]
        assert "no such task here" in refusal
        _assert_not_in_sql(c, SECRET)
        manager.close()


def test_python_api_stores_secrets_first_and_sends_references(
    tmp_path: Path, valkey_url: str
) -> None:
    """tasks.api.Scheduler: the queued message holds references, SQL holds ciphertext."""
    senv = make_env(tmp_path, valkey_url)
    scheduler = Scheduler(create_app(senv.settings), senv.settings)
    scheduler.create_session(
        image=IMAGE, environ={"API_TOKEN": SECRET, "A": "b"}, secret_environ={"DSN": DECLARED}
    )
    client = sync_redis.Redis.from_url(senv.settings.redis_url)
    [raw] = client.lrange("sokovan", 0, -1)  # no worker: the message waits in the queue
    client.close()
    assert not leaks(raw, SECRET) and not leaks(raw, DECLARED)
    _, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
    environ = kwargs["request"]["environ"]
    assert environ["A"] == "b" and is_secret_ref(environ["API_TOKEN"])
    assert is_secret_ref(environ["DSN"])
    assert not [r for r in sql_rows(senv.engine) if leaks(r, SECRET) or leaks(r, DECLARED)]
    assert len([r for r in sql_rows(senv.engine) if "API_TOKEN" in r or "DSN" in r]) == 2
