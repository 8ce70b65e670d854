"""`sokovan up`'s supervisor with real processes: the worker and beat are started again when
they exit on their own; any other exit, or a signal, stops everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tasks.cli.supervisor import RESTART_BURST
from tests.workers import ROOT

pytestmark = pytest.mark.integration

RUN = """
import json, sys
from tasks.cli.supervisor import Supervisor
commands, restart = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.exit(Supervisor(commands, restart).loop())
"""


def supervise(
    tmp_path: Path, commands: dict[str, str], restart: list[str]
) -> subprocess.Popen[str]:
    """The supervisor in a process of its own (it owns SIGINT and SIGTERM), output in a file."""
    out = (tmp_path / "supervisor.log").open("w")
    with out:
        return subprocess.Popen(
            [sys.executable, "-c", RUN, json.dumps(commands), json.dumps(restart)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


def output(tmp_path: Path) -> str:
    return (tmp_path / "supervisor.log").read_text()


def wait_for_text(tmp_path: Path, text: str, count: int = 1, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while output(tmp_path).count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} x{count} not seen:\n{output(tmp_path)}"
        time.sleep(0.1)


def exits_once(marker: Path) -> str:
    """A command that exits 3 the first time it runs and then stays up (touching `marker`)."""
    return f"if [ -e {marker} ]; then exec sleep 120; fi; touch {marker}; echo crashing; exit 3"


def test_a_worker_that_exits_on_its_own_is_started_again_and_nothing_else_stops(
    tmp_path: Path,
) -> None:
    """Given a worker, beat and an agent under the supervisor, when the worker exits on its
    own (as kombu can make it when Valkey dies), it is started again and the others keep
    running; SIGINT then stops every process and the supervisor exits 130."""
    commands = {
        "worker": exits_once(tmp_path / "worker-ran"),
        "beat": "exec sleep 120",
        "agent1": "exec sleep 120",
    }
    proc = supervise(tmp_path, commands, ["worker", "beat"])
    try:
        wait_for_text(tmp_path, "worker started", count=2)
        text = output(tmp_path)
        assert "worker exited on its own (rc=3); starting it again" in text, text
        assert "stopped" not in text, text
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len([c for c in children if "sleep" in c.name()]) == 3, text
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(30) == 128 + signal.SIGINT, output(tmp_path)
    text = output(tmp_path)
    assert "SIGINT received" in text and "Traceback" not in text, text
    for name in commands:
        assert f"{name} stopped" in text, text
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_a_worker_that_keeps_exiting_stops_everything(tmp_path: Path) -> None:
    """A worker that exits at once every time is restarted RESTART_BURST times, then
    everything stops with its exit code, as honcho stops everything."""
    proc = supervise(tmp_path, {"worker": "exit 3", "agent1": "exec sleep 120"}, ["worker"])
    try:
        assert proc.wait(60) == 3, output(tmp_path)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = output(tmp_path)
    assert text.count("worker exited on its own") == RESTART_BURST, text
    assert f"worker exited {RESTART_BURST + 1} times" in text, text
    assert "agent1 stopped" in text, text


def test_any_other_process_that_exits_stops_everything(tmp_path: Path) -> None:
    """An agent (not restartable) that exits stops the worker too, with the agent's code."""
    proc = supervise(
        tmp_path, {"worker": "exec sleep 120", "agent1": "sleep 1; exit 4"}, ["worker"]
    )
    try:
        assert proc.wait(60) == 4, output(tmp_path)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = output(tmp_path)
    assert "exited on its own" not in text, text
    assert "agent1 stopped (rc=4)" in text and "worker stopped" in text, text
