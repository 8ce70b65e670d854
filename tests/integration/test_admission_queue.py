"""100 sessions at once on room for 60, through a real worker and real agents (SC-AD-004..007)."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sokovan.db.schema import run_items
from sokovan.types import SessionId, SessionStatus
from tests.agents import agent_process
from tests.cluster import Cluster, running_cluster
from tests.workers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CPU_PER_AGENT = 30
ONE_CPU = {"cpu": 1, "mem": 2**20}


class Watch:
    """Samples occupancy and the queue in a thread; records every violation it sees."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.queue: list[SessionId] = []  # PENDING sessions in queue order, once known
        self.violations: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for agent, slots in self.c.repo.occupied_by_agent().items():
                cpu = slots.get("cpu", Decimal(0))
                if not 0 <= cpu <= CPU_PER_AGENT:
                    self.violations.append(f"agent {agent} at cpu={cpu}")
            if self.queue:
                status = {s.id: s.status for s in self.c.repo.sessions_by_ids(self.queue)}
                waiting = [sid for sid in self.queue if status[sid] == SessionStatus.PENDING]
                # Oldest first: whatever still waits is the tail of the queue.
                if waiting != self.queue[len(self.queue) - len(waiting) :]:
                    self.violations.append(f"a younger session started first: {len(waiting)}")
            self.samples += 1

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


def create_all(c: Cluster, count: int) -> list[dict[str, Any]]:
    """`count` submissions sent at once; their answers in sending order."""
    results = [
        c.app.send_task("sokovan.session.create", kwargs={"request": request()})
        for _ in range(count)
    ]
    return [r.get(timeout=180) for r in results]


def request(**extra: Any) -> dict[str, Any]:
    from tests.cluster import IMAGE

    return {"image": IMAGE, "resource_slots": ONE_CPU, **extra}


def statuses(c: Cluster, ids: list[SessionId]) -> list[SessionStatus]:
    by_id = {s.id: s.status for s in c.repo.sessions_by_ids(ids)}
    return [by_id[i] for i in ids]


def all_in(c: Cluster, ids: list[SessionId], status: SessionStatus, timeout: float = 240) -> None:
    wait_for(
        lambda: all(s == status for s in statuses(c, ids)),
        timeout=timeout,
        what=f"{len(ids)} sessions to be {status}",
    )


async def test_a_full_cluster_queues_and_starts_oldest_first(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-AD-004, SC-AD-005, SC-AD-006, SC-AD-007 through the worker.

    Given two agents with 30 CPUs each, when 100 one-CPU sessions are submitted at once,
    60 run and 40 wait PENDING with queue positions 1..40 (the CLI lists them), no agent
    is ever sampled over capacity, a 101st session is cancelled while PENDING without any
    agent call, and terminating 40 running sessions starts the 40 waiting ones, oldest first."""
    cpu = ["--cpu", str(CPU_PER_AGENT)]
    async with running_cluster(tmp_path, valkey_url, runtime="sim", extra_args=cpu) as c:
        with Watch(c) as watch:
            answers = create_all(c, 100)
            placed = [SessionId(uuid.UUID(a["session_id"])) for a in answers if "pull_run_id" in a]
            waiting = sorted(
                (a for a in answers if a.get("status") == "PENDING"),
                key=lambda a: a["queue_position"],
            )
            assert (len(placed), len(waiting)) == (60, 40), answers[:3]
            assert [a["queue_position"] for a in waiting] == list(range(1, 41))
            watch.queue = [SessionId(uuid.UUID(a["session_id"])) for a in waiting]
            all_in(c, placed, SessionStatus.RUNNING)
            assert statuses(c, watch.queue) == [SessionStatus.PENDING] * 40

            listing = cli_pending(c)  # newest first, as every list: the queue's tail on top
            assert [line.split()[3] for line in listing[1:]] == [str(n) for n in range(40, 0, -1)]

            extra = c.send("sokovan.session.create", request=request())
            assert (extra["status"], extra["queue_position"]) == ("PENDING", 41)
            cancelled = c.send("sokovan.session.terminate", session_id=extra["session_id"])
            assert cancelled["status"] == "CANCELLED" and cancelled["terminating"] is False
            gone = c.session(SessionId(uuid.UUID(extra["session_id"])))
            assert gone.status == SessionStatus.CANCELLED
            assert all(k.agent_id is None for k in gone.kernels)
            assert not outcomes_of(c, [str(k.id) for k in gone.kernels])

            results = [
                c.app.send_task("sokovan.session.terminate", kwargs={"session_id": str(sid)})
                for sid in placed[:40]
            ]
            assert all(r.get(timeout=120)["terminating"] for r in results)
            all_in(c, placed[:40], SessionStatus.TERMINATED)
            all_in(c, watch.queue, SessionStatus.RUNNING)
            assert statuses(c, placed[40:]) == [SessionStatus.RUNNING] * 20
        assert watch.samples > 10
        assert watch.violations == []


def cli_pending(c: Cluster) -> list[str]:
    """`sokovan session list --status pending` output lines."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "sokovan"), "session", "list", "--status", "pending"],
        env=c.senv.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "STATUS", "QUEUE"]
    return lines


def outcomes_of(c: Cluster, item_ids: list[str]) -> list[Any]:
    """Run ledger items of these kernels: there are some only if a handler acted on them."""
    with c.senv.engine.connect() as conn:
        return list(conn.execute(sa.select(run_items).where(run_items.c.item_id.in_(item_ids))))


async def test_an_agent_joining_places_the_waiting_session(tmp_path: Path, valkey_url: str) -> None:
    """SC-AD-006: capacity that arrives with a new agent goes to the queue at once.

    Given one agent with room for two one-CPU sessions and a third one PENDING, when a
    second agent starts and `sokovan.agents.sync` registers it, the waiting session is
    placed on it and runs, without waiting for a beat tick (no beat runs here)."""
    cpu = ["--cpu", "2"]
    async with running_cluster(tmp_path, valkey_url, agents=1, runtime="sim", extra_args=cpu) as c:
        answers = [c.send("sokovan.session.create", request=request()) for _ in range(3)]
        assert [a["status"] for a in answers] == ["SCHEDULED", "SCHEDULED", "PENDING"]
        waiting = SessionId(uuid.UUID(answers[2]["session_id"]))
        async with agent_process(c.senv.settings.redis_url, agent_id="b1", extra_args=cpu):
            assert c.send("sokovan.agents.sync")["alive"] == 2
            session = c.wait_status(waiting, SessionStatus.RUNNING)
            assert {k.agent_id for k in session.kernels} == {"b1"}
