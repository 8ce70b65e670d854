"""The soak's mixed workload: create sessions (one kernel or several), terminate some, and
kill kernel processes behind the scheduler's back, at a bounded rate; plus what became of each.

Every request goes through the public tasks, as a manager sends them, and counts as
acknowledged only when the worker's answer came back. A tracker reads the sessions from SQL
twice a second and notes when each was first seen RUNNING and first seen ended.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from celery import Celery

from bench.chaos.rig import IMAGE, ChaosCluster
from sokovan.db.schema import kernels, sessions
from sokovan.types import TERMINAL_SESSION_STATUSES, KernelStatus, SessionStatus
from tasks import names

log = logging.getLogger(__name__)

# A quarter core and 256 MiB per kernel: the agents (8 cores) never fill up unless asked.
SLOTS = {"cpu": "0.25", "mem": str(256 * 2**20)}
ANSWER_WITHIN = 30.0
TRACK_EVERY = 0.5
_ENDED = {str(s) for s in TERMINAL_SESSION_STATUSES}


@dataclass
class Tracked:
    """One create request and what became of its session (monotonic times)."""

    n: int
    kernels: int
    requested_at: float
    session_id: str | None = None
    answer: str = ""  # the status the worker answered, or why there was none
    acked: bool = False
    running_at: float | None = None
    ended_at: float | None = None
    ended_status: str | None = None
    terminate_at: float | None = None  # the acknowledged terminate request was sent
    terminate_tries: int = 0
    # A kernel that died behind the scheduler's back (killed, or with its agent), and when:
    # no terminate is asked for such a session, so the scheduler alone must end it.
    killed_kernel: str | None = None
    died_at: float | None = None


@dataclass
class Answer:
    value: dict[str, Any] | None
    error: str = ""


class Client:
    """The public tasks from one thread, as Celery's result backend wants its client."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="soak-client")

    async def ask(self, task: str, within: float = ANSWER_WITHIN, **kwargs: Any) -> Answer:
        """Sends a task and waits up to `within` seconds for its answer."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + within
        try:
            result = await loop.run_in_executor(
                self._pool, lambda: self.app.send_task(task, kwargs=kwargs)
            )
        except Exception as e:
            return Answer(None, f"not sent: {type(e).__name__}: {e}")
        error = f"no answer within {within:g} s"
        while time.monotonic() < deadline:
            try:
                if await loop.run_in_executor(self._pool, result.ready):
                    value = await loop.run_in_executor(self._pool, lambda: result.result)
                    if isinstance(value, dict):
                        return Answer(value)
                    return Answer(None, f"task failed: {value!r}"[:300])
            except Exception as e:
                error = f"no answer: {type(e).__name__}: {e}"[:300]
            await asyncio.sleep(0.2)
        return Answer(None, error)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Workload:
    """Bounded mixed load on a ChaosCluster; every request and kill is recorded."""

    cluster: ChaosCluster
    client: Client
    rng: random.Random
    every: float = 1.5  # seconds between operations
    cap: int = 12  # sessions live at once
    inflight: int = 4
    tracked: list[Tracked] = field(default_factory=list)
    killed: list[tuple[str, str, float]] = field(default_factory=list)  # kernel, session, at
    lost: list[tuple[str, str, float]] = field(default_factory=list)  # died with their agent
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def engine(self) -> sa.Engine:
        return self.cluster.env.engine

    def live(self) -> list[Tracked]:
        """Acknowledged sessions not ended and not asked to end."""
        return [t for t in self.tracked if t.acked and t.ended_at is None and not t.terminate_at]

    async def run(self, stop: asyncio.Event) -> None:
        """Starts one operation every `every` seconds until `stop`; then waits for the rest."""
        while not stop.is_set():
            if len(self._tasks) < self.inflight:
                task = asyncio.create_task(self._one())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _one(self) -> None:
        pending = sum(1 for t in self.tracked if t.session_id is None and not t.answer)
        roll = self.rng.random()
        try:
            if len(self.live()) + pending < self.cap and roll < 0.55:
                await self.create()
            elif roll < 0.85:
                await self.terminate()
            else:
                await asyncio.to_thread(self.kill_kernel)
        except Exception:  # one failed operation is recorded by its figures, the load goes on
            log.exception("soak operation failed")

    async def create(self, kernels_: int | None = None) -> Tracked:
        """One session of 1 kernel (most) or 2-3 (multi-node); returns its record."""
        count = kernels_ or (1 if self.rng.random() < 0.7 else self.rng.randint(2, 3))
        t = Tracked(len(self.tracked) + 1, count, time.monotonic())
        self.tracked.append(t)
        request: dict[str, Any] = {"image": IMAGE, "name": f"soak-{t.n}", "resource_slots": SLOTS}
        if count > 1:
            request.update(kernels=count, cluster_mode="multi-node")
        answer = await self.client.ask(names.SESSION_CREATE, request=request)
        if answer.value is None or "session_id" not in answer.value:
            t.answer = answer.error or f"refused: {answer.value}"
            return t
        t.session_id = str(answer.value["session_id"])
        t.answer = str(answer.value.get("status", ""))
        t.acked = True
        return t

    async def terminate(self) -> None:
        """Asks to terminate one session seen RUNNING (a user retries one left unanswered)."""
        running = [t for t in self.live() if t.running_at is not None and not t.killed_kernel]
        if not running:
            return
        t = self.rng.choice(running)
        t.terminate_tries += 1
        sent = time.monotonic()
        answer = await self.client.ask(
            names.SESSION_TERMINATE, session_id=t.session_id, reason="USER_REQUESTED"
        )
        if answer.value is not None and not answer.value.get("error"):
            t.terminate_at = t.terminate_at or sent

    def kill_kernel(self) -> None:
        """SIGKILLs the process of one RUNNING kernel of a session seen RUNNING."""
        candidates = {t.session_id: t for t in self.live() if t.running_at and not t.killed_kernel}
        if not candidates:
            return
        ids = [uuid.UUID(str(s)) for s in candidates]
        query = sa.select(kernels.c.id, kernels.c.session_id, kernels.c.agent_id).where(
            kernels.c.session_id.in_(ids), kernels.c.status == str(KernelStatus.RUNNING)
        )
        with self.engine.connect() as conn:
            rows = list(conn.execute(query))
        if not rows:
            return
        kid, sid, agent_id = self.rng.choice(rows)
        pid = self.cluster.kernel_processes(str(agent_id)).get(str(kid))
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.killed.append(self._died(candidates[str(sid)], str(kid)))

    def agent_dies(self, agent_id: str) -> None:
        """Notes the kernels an agent runs as dying with it (call just before its SIGKILL)."""
        running = set(self.cluster.kernel_processes(agent_id))
        if not running:
            return
        ids = [uuid.UUID(k) for k in running]
        query = sa.select(kernels.c.id, kernels.c.session_id).where(kernels.c.id.in_(ids))
        with self.engine.connect() as conn:
            owners = {str(r.session_id): str(r.id) for r in conn.execute(query)}
        for t in self.tracked:
            kid = owners.get(t.session_id or "")
            if kid is not None and t.ended_at is None and not t.killed_kernel:
                self.lost.append(self._died(t, kid))

    @staticmethod
    def _died(t: Tracked, kernel_id: str) -> tuple[str, str, float]:
        t.killed_kernel, t.died_at = kernel_id, time.monotonic()
        return kernel_id, str(t.session_id), t.died_at

    async def track(self, stop: asyncio.Event) -> None:
        """Notes when each session is first seen RUNNING and first seen ended, until `stop`."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.observe)
            except Exception:  # SQLite busy under the load: the next look will do
                log.warning("soak tracker could not read the sessions", exc_info=True)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TRACK_EVERY)

    def observe(self) -> None:
        """One look at every session's status."""
        now = time.monotonic()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(sessions.c.id, sessions.c.status))
            statuses = {str(r.id): str(r.status) for r in rows}
        for t in self.tracked:
            status = statuses.get(t.session_id or "")
            if status is None:
                continue
            if status == SessionStatus.RUNNING and t.running_at is None:
                t.running_at = now
            if status in _ENDED and t.ended_at is None:
                t.ended_at, t.ended_status = now, status


def percentile(values: list[float], share: float) -> float | None:
    """The value below which `share` of the values fall (nearest rank); None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(share * len(ordered) + 0.5) - 1))
    return ordered[rank]
