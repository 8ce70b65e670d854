"""Concurrent submissions never over-commit an agent, on SQLite and PostgreSQL (SC-AD-004)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from sokovan.db.engine import create_engine, upgrade
from sokovan.db.repository import AgentRow, SchedulerRepository
from sokovan.errors import NoCapacity
from sokovan.scheduler.submit import SessionRequest, Submitted, submit_session
from sokovan.types import AgentId, ImageConfig, KernelStatus, ResourceSlot, SessionStatus
from tests.pg import postgres_engine

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

IMAGE = "img:1"
CPU_PER_AGENT = 30  # two agents: room for 60 one-CPU sessions
SUBMISSIONS = 100


@pytest.fixture(scope="module")
def pg() -> Iterator[sa.Engine]:
    with postgres_engine() as engine:
        yield engine


@pytest.fixture(params=["sqlite", "postgresql"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SchedulerRepository]:
    """A migrated database with two agents of 30 CPUs in a scaling group of the test's own."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'sokovan.db'}")
        upgrade(engine)
    else:
        engine = request.getfixturevalue("pg")
    repo = SchedulerRepository(engine)
    repo.add_image(ImageConfig(canonical=IMAGE))
    group = f"g-{uuid.uuid4().hex[:8]}"
    for n in (1, 2):
        repo.upsert_agent(
            AgentRow(
                AgentId(f"{group}-a{n}"),
                "tcp://127.0.0.1:1",
                scaling_group=group,
                capacity=ResourceSlot.from_json({"cpu": CPU_PER_AGENT, "mem": 2**40}),
            )
        )
    repo.group = group  # type: ignore[attr-defined]
    yield repo
    if request.param == "sqlite":
        engine.dispose()


def request_of(repo: SchedulerRepository, queue: bool) -> SessionRequest:
    return SessionRequest(
        image=IMAGE,
        resource_slots=ResourceSlot.from_json({"cpu": 1, "mem": 2**20}),
        scaling_group=repo.group,  # type: ignore[attr-defined]
        queue=queue,
    )


class Sampler:
    """Reads every agent's occupancy in a loop; keeps the worst it saw."""

    def __init__(self, repo: SchedulerRepository) -> None:
        self.repo = repo
        self.max_cpu = Decimal(0)
        self.min_cpu = Decimal(0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for slots in self.repo.occupied_by_agent().values():
                cpu = slots.get("cpu", Decimal(0))
                self.max_cpu = max(self.max_cpu, cpu)
                self.min_cpu = min(self.min_cpu, cpu)
            self.samples += 1

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


def submit_all(repo: SchedulerRepository, queue: bool) -> list[Submitted | NoCapacity]:
    """SUBMISSIONS submissions released at the same moment from as many threads."""
    start = threading.Barrier(SUBMISSIONS)

    def one(_: int) -> Submitted | NoCapacity:
        start.wait()
        try:
            return submit_session(repo, request_of(repo, queue))
        except NoCapacity as e:
            return e

    with ThreadPoolExecutor(SUBMISSIONS) as pool:
        return list(pool.map(one, range(SUBMISSIONS)))


def test_concurrent_submissions_queue_what_does_not_fit(repo: SchedulerRepository) -> None:
    """SC-AD-004, SC-AD-005: 100 at once on room for 60: 60 placed, 40 PENDING, none over."""
    with Sampler(repo) as sampler:
        results = submit_all(repo, queue=True)
    placed = [
        r for r in results if isinstance(r, Submitted) and r.status == SessionStatus.SCHEDULED
    ]
    pending = [r for r in results if isinstance(r, Submitted) and r.status == SessionStatus.PENDING]
    assert (len(placed), len(pending)) == (60, 40)
    assert sorted(r.queue_position or 0 for r in pending) == list(range(1, 41))
    group = repo.group  # type: ignore[attr-defined]
    occupied = {a: s for a, s in repo.occupied_by_agent().items() if a.startswith(group)}
    assert {a: s["cpu"] for a, s in occupied.items()} == {
        f"{repo.group}-a1": CPU_PER_AGENT,  # type: ignore[attr-defined]
        f"{repo.group}-a2": CPU_PER_AGENT,  # type: ignore[attr-defined]
    }
    assert sampler.samples > 0 and sampler.max_cpu <= CPU_PER_AGENT
    positions = repo.queue_positions()
    assert sorted(positions[r.session_id] for r in pending) == list(range(1, 41))


def test_concurrent_submissions_without_queue_refuse_the_rest(repo: SchedulerRepository) -> None:
    """SC-AD-004: with queue false, 60 are placed and 40 refused NoCapacity; freeing is exact."""
    with Sampler(repo) as sampler:
        results = submit_all(repo, queue=False)
        refused = [r for r in results if isinstance(r, NoCapacity)]
        placed = [r.session_id for r in results if isinstance(r, Submitted)]
        assert (len(placed), len(refused)) == (60, 40)
        assert all(e.field == "resource_slots" for e in refused)
        kernels = [k.id for s in repo.sessions_by_ids(placed) for k in s.kernels]
        every = [s for s in KernelStatus]
        assert len(repo.transition_kernels(kernels, KernelStatus.TERMINATED, every)) == 60
        # A late duplicate move frees nothing twice: the kernels are terminal already.
        assert repo.transition_kernels(kernels, KernelStatus.TERMINATED, every[:-4]) == []
    assert sampler.max_cpu <= CPU_PER_AGENT and sampler.min_cpu >= 0
    group = repo.group  # type: ignore[attr-defined]
    assert {a: s for a, s in repo.occupied_by_agent().items() if a.startswith(group)} == {}
