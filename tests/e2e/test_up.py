"""`sokovan up` from a fresh var dir, driven by the README's own commands, three times in a row."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.e2e


def readme_commands() -> list[str]:
    """The `sokovan ...` lines of the README's block after "In another shell:"."""
    text = (ROOT / "README.md").read_text()
    block = text.split("In another shell:", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    commands = [line for line in lines if line.startswith("sokovan ")]
    assert len(commands) >= 6, block
    return commands


def _free_pair() -> int:
    """A port p with p and p + 1 both free, for the two reference agents."""
    for _ in range(100):
        base = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise AssertionError("no two consecutive free ports")


def up_env(var_dir: Path) -> dict[str, str]:
    """Environment of one instance: its own var dir and ports, nothing else of SOKOVAN_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOKOVAN_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        SOKOVAN_VAR_DIR=str(var_dir),
        SOKOVAN_EMBEDDED_VALKEY_PORT=str(free_port()),
        SOKOVAN_FLOWER_PORT=str(free_port()),
        SOKOVAN_METRICS_PORT=str(free_port()),
        SOKOVAN_AGENT_BASE_PORT=str(_free_pair()),
    )
    return env


@contextmanager
def running_up(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`sokovan up` until its `sokovan is up` line; stopped with SIGINT as Ctrl-C would."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "sokovan"), "up"],
            cwd=log.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "sokovan is up" not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"sokovan up exited:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"not up in 120 s:\n{log.read_text()[-4000:]}"
            time.sleep(0.3)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            raise


def sokovan(env: dict[str, str], cwd: Path, line: str) -> subprocess.CompletedProcess[str]:
    """Runs one README line as a user would type it; it must exit 0."""
    args = shlex.split(line)
    done = subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, f"{line}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _descendants_gone(pid_list: list[int]) -> bool:
    return not [
        p for p in pid_list if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
    ]


def follow_the_readme(env: dict[str, str], cwd: Path) -> None:
    """Every command of the README block, with SESSION_ID and RUN_ID filled in."""
    session_id = run_id = ""
    for line in readme_commands():
        line = line.replace("SESSION_ID", session_id).replace("RUN_ID", run_id)
        done = sokovan(env, cwd, line)
        if line.startswith("sokovan session create"):
            listed = json.loads(sokovan(env, cwd, "sokovan session list --json").stdout)
            newest = listed["sessions"][0]
            assert newest["status"] == "RUNNING" and newest["kernels"] == 3, newest
            session_id = newest["id"]
        if line.startswith("sokovan session terminate"):
            shown = json.loads(
                sokovan(env, cwd, f"sokovan session show {session_id} --json").stdout
            )
            assert shown["status"] == "TERMINATED", shown
            assert {k["status"] for k in shown["kernels"]} == {"TERMINATED"}
        if line.startswith("sokovan runs list"):
            runs = json.loads(sokovan(env, cwd, "sokovan runs list --json").stdout)["runs"]
            # The newest terminate run; the newest run of all may be a beat tick that finds
            # nothing to do, whose row goes when it ends (SOKOVAN_RECORD_EMPTY_BEAT_RUNS).
            terminate = next(r for r in runs if r["handler"] == "terminate_sessions")
            assert terminate["status"] == "succeeded", runs
            run_id = str(terminate["id"])
        if line.startswith("sokovan status"):
            doc = json.loads(sokovan(env, cwd, "sokovan status --json").stdout)
            assert doc["var_dir"] == env["SOKOVAN_VAR_DIR"] and doc["workers"], doc
        assert done.stdout or done.stderr


def burst(env: dict[str, str], cwd: Path) -> None:
    """Five sessions created and terminated by one command each, followed to the end."""
    image = "cr.backend.ai/stable/python:3.12-ubuntu22.04"
    made = sokovan(env, cwd, f"sokovan session create --image {image} --count 5 --wait 90 --json")
    sessions = json.loads(made.stdout)["sessions"]
    assert [s["status"] for s in sessions] == ["RUNNING"] * 5, sessions
    assert "5/5 RUNNING" in made.stderr  # the live progress line
    ids = " ".join(s["session_id"] for s in sessions)
    gone = sokovan(env, cwd, f"sokovan session terminate {ids} --wait 90 --json")
    assert {s["status"] for s in json.loads(gone.stdout)["sessions"]} == {"TERMINATED"}
    listed = json.loads(sokovan(env, cwd, "sokovan session list --limit 2 --json").stdout)
    assert listed["more"] == listed["total"] - 2 and listed["total"] >= 6


@pytest.mark.timeout(600)
def test_up_from_a_fresh_var_dir_three_times_runs_the_readme(tmp_path: Path) -> None:
    """Given a fresh var dir, `sokovan up` comes up, the README's commands take a 3-kernel
    session to RUNNING and back to TERMINATED, and SIGINT stops every process; three times."""
    for attempt in range(3):
        home = tmp_path / f"try{attempt}"
        home.mkdir()
        env = up_env(home / "data")
        with running_up(env, home / "up.log") as proc:
            children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
            assert len(children) >= 7  # valkey, worker, beat, flower, metrics, two agents
            follow_the_readme(env, home)
            if attempt == 0:
                burst(env, home)
        assert proc.returncode is not None
        assert "Traceback" not in (home / "up.log").read_text(errors="replace")
        deadline = time.monotonic() + 30
        while not _descendants_gone(children):
            assert time.monotonic() < deadline, "processes left after SIGINT"
            time.sleep(0.2)
        assert not (home / "var").exists()  # nothing written to the current directory


def test_port_in_use_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    """A port held by something else: exit 1 and one line naming the setting to change."""
    env = up_env(tmp_path / "data")
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", int(env["SOKOVAN_FLOWER_PORT"])))
        holder.listen()
        done = subprocess.run(
            [str(BIN / "sokovan"), "up"], env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "SOKOVAN_FLOWER_PORT" in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.timeout(300)
def test_sc_op_009_up_says_up_when_agents_take_sessions(tmp_path: Path) -> None:
    """SC-OP-009/SC-OP-011: the moment `sokovan up` says it is up, `agents list` and
    `status` agree on two ALIVE agents and the first create is placed (RUNNING), not answered
    PENDING until beat's next agent sync; `status` sees beat by its heartbeat."""
    env = up_env(tmp_path / "data")
    with running_up(env, tmp_path / "up.log"):
        agents = json.loads(sokovan(env, tmp_path, "sokovan agents list --json").stdout)
        assert [a["status"] for a in agents["agents"]] == ["ALIVE", "ALIVE"], agents
        doc = json.loads(sokovan(env, tmp_path, "sokovan status --json").stdout)
        assert doc["database"]["agents"] == {"ALIVE": 2}, doc
        image = "cr.backend.ai/stable/python:3.12-ubuntu22.04"
        sokovan(env, tmp_path, f"sokovan image add {image}")
        made = sokovan(env, tmp_path, f"sokovan session create --image {image} --json")
        assert json.loads(made.stdout)["status"] == "RUNNING", made.stdout
        deadline = time.monotonic() + 30
        while not json.loads(sokovan(env, tmp_path, "sokovan status --json").stdout)["beat"][
            "running"
        ]:
            assert time.monotonic() < deadline, "beat's heartbeat never seen"
            time.sleep(1)


def _worker_tree(up_pid: int) -> list[psutil.Process]:
    """The processes of the worker's group under `sokovan up` (its shell, main and pool)."""
    found = []
    for child in psutil.Process(up_pid).children(recursive=True):
        try:
            if "worker" in child.cmdline() and any("celery" in a for a in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    assert found, "no worker under sokovan up"
    group = os.getpgid(found[0].pid)
    return [c for c in psutil.Process(up_pid).children(recursive=True) if _group(c) == group]


def _leads(p: psutil.Process) -> bool:
    return _group(p) == p.pid


def _group(p: psutil.Process) -> int | None:
    try:
        return os.getpgid(p.pid)
    except ProcessLookupError:
        return None


@pytest.mark.timeout(300)
def test_up_starts_the_worker_again_when_its_tree_dies(tmp_path: Path) -> None:
    """Given `sokovan up`, when the worker's whole process tree is SIGKILLed (as a broker dying
    under it or an OOM kill can end a worker), then `sokovan up` starts it again and keeps
    every other process: a session created afterwards reaches RUNNING."""
    env = up_env(tmp_path / "data")
    log = tmp_path / "up.log"
    with running_up(env, log) as proc:
        killed = _worker_tree(proc.pid)
        # Valkey and every process but the worker, each the leader of its own group.
        others = [c for c in psutil.Process(proc.pid).children(recursive=True) if _leads(c)]
        others = [c for c in others if c not in killed]
        os.killpg(os.getpgid(killed[0].pid), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while "worker exited on its own" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.3)
        image = "cr.backend.ai/stable/python:3.12-ubuntu22.04"
        sokovan(env, tmp_path, f"sokovan image add {image}")
        made = sokovan(env, tmp_path, f"sokovan session create --image {image} --wait 90 --json")
        assert json.loads(made.stdout)["status"] == "RUNNING", made.stdout
        assert proc.poll() is None
        assert len(others) >= 6 and all(c.is_running() for c in others), log.read_text()[-4000:]
        assert {c.pid for c in _worker_tree(proc.pid)}.isdisjoint(c.pid for c in killed)
