"""The operator's habits through the CLI as typed: logs (SC-OP-008), terminate by filter
(SC-OP-005), watch and wait (SC-OP-006), against a real worker and reference agents."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from sokovan.db.repository import NewKernel
from sokovan.db.schema import sessions
from sokovan.records import AgentRow
from sokovan.types import AgentId, KernelId, ResourceSlot, SessionId, SessionStatus, utcnow
from tests.cluster import IMAGE, Cluster, running_cluster
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SOKOVAN = str(Path(sys.executable).parent / "sokovan")


def cli(c: Cluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`sokovan ARGS` as a user types it (stdin: what they answer)."""
    return subprocess.run(
        [SOKOVAN, *args], env=c.senv.env, capture_output=True, text=True, timeout=120,
        check=False, input=stdin,
    )  # fmt: skip


async def acli(
    c: Cluster, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, c, *args, stdin=stdin)


async def create(c: Cluster, *args: str) -> SessionId:
    done = await acli(c, "session", "create", "--image", IMAGE, *args)
    assert done.returncode == 0, done.stderr
    return SessionId(uuid.UUID(done.stdout.split()[1]))


def slots(cpu: int) -> ResourceSlot:
    return ResourceSlot.from_json({"cpu": str(cpu)})


def statuses(c: Cluster, *sids: SessionId) -> list[str]:
    return [str(c.session(s).status) for s in sids]


async def test_sc_op_008_session_logs_from_the_kernels_agent(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-OP-008: `session logs` prints the kernel's output as its agent serves it (get_logs).

    Given a RUNNING session on a reference agent with process kernels,
    then `session logs ID` prints what the kernel process wrote, `--tail` and `--kernel`
    select, `--json` is one document; a wrong kernel exits 2, and a kernel whose agent does
    not answer exits 3 with one line naming the agent."""
    async with running_cluster(tmp_path, valkey_url, runtime="process") as c:
        sid = await create(c)
        [kernel] = c.session(sid).kernels
        done = await acli(c, "session", "logs", str(sid))
        assert done.returncode == 0, done.stderr
        assert f"kernel {kernel.id} started" in done.stdout
        done = await acli(c, "session", "logs", str(sid), "--kernel", str(kernel.id)[:8],
                          "--tail", "1", "--json")  # fmt: skip
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["kernel_id"] == str(kernel.id) and doc["agent"] == kernel.agent_id
        assert doc["logs"].count("\n") == 0 and "started" in doc["logs"]
        bad = await acli(c, "session", "logs", str(sid), "--kernel", "nope")
        assert bad.returncode == 2 and bad.stderr.startswith("refused: --kernel"), bad.stderr
        bad = await acli(c, "session", "logs", str(sid), "--tail", "0")
        assert bad.returncode == 2, bad.stderr

        # A kernel on an agent that does not answer: one line, exit 3, within the call timeout.
        ghost = AgentId("ghost")
        c.repo.upsert_agent(AgentRow(ghost, f"tcp://127.0.0.1:{free_port()}", capacity=slots(8)))
        lost = SessionId(uuid.uuid4())
        c.repo.create_session(
            session_id=lost,
            name="on-ghost",
            kernels_=[NewKernel(KernelId(uuid.uuid4()), ghost, IMAGE, slots(1))],
            status=SessionStatus.RUNNING,
        )
        started = time.monotonic()
        down = await acli(c, "session", "logs", str(lost))
        assert down.returncode == 3, (down.returncode, down.stderr)
        assert down.stderr.startswith("unreachable: agent ghost"), down.stderr
        assert len(down.stderr.strip().splitlines()) == 1 and "Traceback" not in down.stderr
        assert time.monotonic() - started < 30


async def test_sc_op_005_terminate_by_filter(tmp_path: Path, valkey_url: str) -> None:
    """SC-OP-005: `session terminate --status/--agent/--older-than` with --dry-run and a question.

    Given RUNNING sessions on two agents, two of them created 3 hours ago, and a PENDING one,
    then --dry-run shows exactly the old one on agent A and ends nothing; answering "n" ends
    nothing (exit 1); answering "y" ends exactly it; `--status PENDING --yes` cancels exactly
    the PENDING one; no filter and no id is refused (exit 2)."""
    async with running_cluster(tmp_path, valkey_url, runtime="process") as c:
        a, b = sorted(c.agents.agents)
        old_a, new_a, old_b = [await create(c, "--agent", x) for x in (a, a, b)]
        # Agent A's 8 CPUs hold 2 sessions: one asking for all 8 of them waits.
        pending = await create(c, "--slot", "cpu=8", "--agent", a)
        assert statuses(c, old_a, new_a, old_b, pending) == ["RUNNING"] * 3 + ["PENDING"]
        with c.senv.engine.begin() as conn:
            conn.execute(
                sessions.update()
                .where(sessions.c.id.in_([old_a, old_b]))
                .values(created_at=utcnow() - timedelta(hours=3))
            )

        dry = await acli(c, "session", "terminate", "--agent", a, "--older-than", "2h",
                         "--dry-run")  # fmt: skip
        assert dry.returncode == 0, dry.stderr
        assert str(old_a) in dry.stdout
        assert all(str(s) not in dry.stdout for s in (new_a, old_b, pending))
        assert "1 session(s) would be terminated" in dry.stdout
        dry_json = await acli(c, "session", "terminate", "--older-than", "2h", "--dry-run",
                              "--json")  # fmt: skip
        assert {s["id"] for s in json.loads(dry_json.stdout)["sessions"]} == {
            str(old_a), str(old_b)
        }  # fmt: skip

        no = await acli(c, "session", "terminate", "--agent", a, "--older-than", "2h", stdin="n\n")
        assert no.returncode == 1 and "aborted: nothing terminated" in no.stderr, no.stderr
        assert statuses(c, old_a, new_a, old_b, pending) == ["RUNNING"] * 3 + ["PENDING"]

        yes = await acli(c, "session", "terminate", "--agent", a, "--older-than", "2h",
                         stdin="y\n")  # fmt: skip
        assert yes.returncode == 0, yes.stderr
        assert f"session {old_a} TERMINATED" in yes.stdout
        assert statuses(c, old_a, new_a, old_b, pending) == [
            "TERMINATED", "RUNNING", "RUNNING", "PENDING"
        ]  # fmt: skip

        cancel = await acli(c, "session", "terminate", "--status", "pending", "--yes")
        assert cancel.returncode == 0, cancel.stderr
        assert statuses(c, old_a, new_a, old_b, pending) == [
            "TERMINATED", "RUNNING", "RUNNING", "CANCELLED"
        ]  # fmt: skip

        for args in ([], ["--older-than", "soon"], [str(new_a), "--agent", a]):
            refused = await acli(c, "session", "terminate", *args)
            assert refused.returncode == 2, (args, refused.stderr)
            assert refused.stderr.startswith("refused:"), refused.stderr
        assert statuses(c, new_a, old_b) == ["RUNNING", "RUNNING"]


class Terminal:
    """A command under a pseudo-terminal, as a user runs it; a reader drains what it draws,
    as a terminal does, and keeps it."""

    def __init__(self, c: Cluster, *args: str) -> None:
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [SOKOVAN, *args], env={**c.senv.env, "COLUMNS": "250", "LINES": "50"},
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        self.master = master
        self._chunks: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the command exited (EIO) or the terminal was closed
                return
            if not chunk:
                return
            self._chunks.append(chunk.decode("utf-8", "replace"))

    @property
    def screen(self) -> str:
        return "".join(self._chunks)

    async def wait_for(self, text: str, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while text not in self.screen:
            assert time.monotonic() < deadline, f"{text!r} never drawn:\n{self.screen[-3000:]}"
            await asyncio.sleep(0.1)

    async def interrupt(self) -> int:
        """Ctrl-C: SIGINT to the foreground process group, as a terminal sends it."""
        os.killpg(self.proc.pid, signal.SIGINT)
        code = await asyncio.to_thread(self.proc.wait, 20)
        await asyncio.to_thread(self._reader.join, 5)
        os.close(self.master)
        return code


async def test_sc_op_006_watch_redraws_and_wait_waits(tmp_path: Path, valkey_url: str) -> None:
    """SC-OP-006: `--watch` redraws as states change and Ctrl-C exits 0; `session wait`.

    Given `session list --watch` and `agents list --watch` under a terminal,
    when a session is created and then terminated, then the list is redrawn with it RUNNING
    and then TERMINATED; Ctrl-C exits 0 for both. `session wait --for RUNNING` exits 0 for
    a running session and 1 (after its timeout) with a PENDING one among them;
    `--for TERMINATED` exits 0 once terminated."""
    async with running_cluster(tmp_path, valkey_url, runtime="process") as c:
        sessions_tty = Terminal(c, "session", "list", "--watch", "--interval", "0.3")
        agents_tty = Terminal(c, "agents", "list", "--watch", "--interval", "0.3")
        await sessions_tty.wait_for("Every 0.3s: sokovan session list")
        for agent_id in c.agents.agents:
            await agents_tty.wait_for(agent_id)

        done = await acli(c, "session", "create", "--image", IMAGE, "--name", "watched",
                          "--wait", "0")  # fmt: skip
        assert done.returncode == 0, done.stderr
        await sessions_tty.wait_for("watched")
        ok = await acli(c, "session", "list", "--json")
        [row] = json.loads(ok.stdout)["sessions"]
        sid = SessionId(uuid.UUID(row["id"]))

        waited = await acli(c, "session", "wait", str(sid), "--for", "RUNNING", "--timeout", "60")
        assert waited.returncode == 0, waited.stderr
        assert f"session {sid} RUNNING" in waited.stdout
        await sessions_tty.wait_for("RUNNING")
        await agents_tty.wait_for("cpu=1")  # the agent's OCCUPIED column changed

        # Its agent's 8 CPUs hold it: a session asking for all 8 there waits.
        host = str(c.session(sid).kernels[0].agent_id)
        pending = await create(c, "--slot", "cpu=8", "--agent", host)
        short = await acli(c, "session", "wait", str(sid), str(pending), "--for", "running",
                           "--timeout", "2")  # fmt: skip
        assert short.returncode == 1, short.stderr
        assert f"session {pending} is PENDING, not RUNNING" in short.stderr
        bad = await acli(c, "session", "wait", str(sid), "--for", "PULLING")
        assert bad.returncode == 2, bad.stderr

        assert (await acli(c, "session", "terminate", str(sid), "--wait", "0")).returncode == 0
        waited = await acli(c, "session", "wait", str(sid), "--for", "TERMINATED")
        assert waited.returncode == 0, waited.stderr
        await sessions_tty.wait_for("TERMINATED")

        assert await sessions_tty.interrupt() == 0, sessions_tty.screen[-2000:]
        assert await agents_tty.interrupt() == 0, agents_tty.screen[-2000:]
        assert "Traceback" not in sessions_tty.screen + agents_tty.screen
        # Redrawn in place: the RUNNING frame came before the TERMINATED one.
        screen = sessions_tty.screen
        assert screen.index("RUNNING") < screen.rindex("TERMINATED")
