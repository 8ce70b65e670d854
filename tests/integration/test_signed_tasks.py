"""Signed task messages: a signed cluster works, rogue messages are refused, the worker goes on."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from celery.security.certificate import Certificate
from typer.testing import CliRunner

from sokovan.config import load_settings
from sokovan.errors import ConfigError
from sokovan.signing_files import create_signing_files, signing_files
from sokovan.types import SessionId, SessionStatus
from tasks.cli import app as cli_app
from tests.cluster import IMAGE, cluster_without_worker, kernel_processes
from tests.services import celery_beat, flower_process, run_cli
from tests.workers import ROOT, SchedulerEnv, celery_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

MARKER = "rogue-marker-7f3a"
UNSIGNED = f"""
import os
from celery import Celery
url = os.environ["SOKOVAN_REDIS_URL"]
app = Celery(broker=url, backend=url)
result = app.send_task(
    "sokovan.session.terminate",
    kwargs={{"session_id": os.environ["SESSION_ID"], "reason": "{MARKER}"}},
    queue="sokovan",
)
print(result.id)
"""


# The page that holds the signed send_task recipe.
SECURITY_PAGE = ROOT / "docs" / "operator" / "security.md"


def documented_recipe() -> str:
    """The signed send_task recipe of the security page, as written."""
    text = SECURITY_PAGE.read_text()
    block = text.split("<!-- signed-send-task -->", 1)[1]
    match = re.search(r"```python\n(.*?)```", block, re.S)
    assert match, f"{SECURITY_PAGE.relative_to(ROOT)} lost its signed send_task recipe"
    return match.group(1)


def send(senv: SchedulerEnv, code: str, session_id: SessionId, signing: Path | None) -> str:
    """Runs a sender script in a process of its own (Celery's serializers are process-wide)."""
    env = {k: v for k, v in senv.env.items() if k != "SOKOVAN_TASK_SIGNING_DIR"}
    env.update(SESSION_ID=str(session_id))
    if signing is not None:
        env["SOKOVAN_TASK_SIGNING_DIR"] = str(signing)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


async def test_signed_cluster_refuses_rogue_messages_and_keeps_serving(
    tmp_path: Path, valkey_url: str
) -> None:
    """A signed cluster launches a session; unsigned and wrongly signed messages are refused.

    Given worker, beat and CLI signing with one key (SOKOVAN_TASK_SIGNING_DIR),
    when a manager sends terminate unsigned, then signed by a key the workers do not trust,
    each is dropped with one log line naming the task (not its body) and answered with a
    FAILURE result saying why (SC-OP-011), the session keeps running and the worker keeps
    its PID; the documented signed recipe then terminates it."""
    trusted = create_signing_files(tmp_path / "signing").key.parent
    rogue = create_signing_files(tmp_path / "rogue", "rogue").key.parent
    settings = {"task_signing_dir": str(trusted), "launch_interval": "2"}
    async with cluster_without_worker(
        tmp_path, valkey_url, runtime="process", settings=settings
    ) as c:
        with (
            celery_worker(c.senv, concurrency=2) as worker,
            celery_beat(c.senv) as beat,
            flower_process(c.senv) as flower,
        ):
            out = run_cli(c.senv, "session", "create", "--image", IMAGE)
            sid = SessionId(uuid.UUID(out.split()[1]))
            [kernel] = c.wait_status(sid, SessionStatus.RUNNING).kernels
            wait_for(
                lambda: any(
                    t.get("name") == "sokovan.agent.create_kernels"
                    for t in flower.json("/api/tasks").values()
                ),
                30,
                what="Flower (same signed app) to show the launch",
            )
            pid = worker.proc.pid
            refused = [
                send(c.senv, UNSIGNED, sid, None),
                send(c.senv, documented_recipe(), sid, rogue),
            ]
            for task_id in refused:
                wait_for(lambda t=task_id: t in worker.output(), 30, what=f"refusal of {task_id}")
            # SC-OP-011: each sender gets a FAILURE result saying why, never silence.
            for task_id, why in zip(refused, ("unsigned message", "not by a key"), strict=True):
                answer = c.app.AsyncResult(task_id)
                wait_for(lambda a=answer: a.state == "FAILURE", 30, what=f"failure of {task_id}")
                assert why in str(answer.result), answer.result
            assert c.session(sid).status == SessionStatus.RUNNING
            assert worker.proc.poll() is None and worker.proc.pid == pid
            assert kernel_processes(str(kernel.id))
            send(c.senv, documented_recipe(), sid, trusted)
            c.wait_status(sid, SessionStatus.TERMINATED)
            assert worker.proc.pid == pid
        log = worker.output()
        for task_id in refused:
            lines = [line for line in log.splitlines() if task_id in line]
            assert len(lines) == 1, lines
            assert "refused task message sokovan.session.terminate" in lines[0]
        assert MARKER not in log and "Traceback" not in log
        assert "refused" not in beat.output()


def test_certs_init_makes_material_the_settings_accept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sokovan certs init`: a key (mode 600), a certificate, a store that trusts it; once."""
    monkeypatch.setenv("SOKOVAN_VAR_DIR", str(tmp_path))
    first = CliRunner().invoke(cli_app, ["certs", "init"])
    assert first.exit_code == 0, first.output
    files = signing_files(
        load_settings({"SOKOVAN_TASK_SIGNING_DIR": str(tmp_path / "signing")}, dotenv=None)
    )
    assert files is not None and files.key.stat().st_mode & 0o077 == 0
    trusted = Certificate(next(files.store.iterdir()).read_text())
    assert trusted.get_id() == Certificate(files.cert.read_text()).get_id()
    assert not trusted.has_expired()
    again = CliRunner().invoke(cli_app, ["certs", "init"])
    assert again.exit_code == 1 and "exists already" in again.output


def test_signing_settings_name_what_is_missing(tmp_path: Path) -> None:
    files = create_signing_files(tmp_path / "s")
    base = {"SOKOVAN_VAR_DIR": str(tmp_path)}
    assert signing_files(load_settings(base, dotenv=None)) is None
    whole = load_settings({**base, "SOKOVAN_TASK_SIGNING_DIR": str(tmp_path / "s")}, dotenv=None)
    assert signing_files(whole) == files
    half = load_settings({**base, "SOKOVAN_TASK_SIGNING_KEY": str(files.key)}, dotenv=None)
    with pytest.raises(
        ConfigError, match="SOKOVAN_TASK_SIGNING_CERT, SOKOVAN_TASK_SIGNING_CERT_STORE"
    ):
        signing_files(half)
    gone = load_settings({**base, "SOKOVAN_TASK_SIGNING_DIR": str(tmp_path / "none")}, dotenv=None)
    with pytest.raises(ConfigError, match="SOKOVAN_TASK_SIGNING_KEY"):
        signing_files(gone)
    assert files.key.stat().st_mode & 0o077 == 0
