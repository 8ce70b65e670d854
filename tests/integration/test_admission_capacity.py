"""Placement and the pending queue in SQL, on SQLite and PostgreSQL (SC-AD-004..007)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from sokovan.db.engine import create_engine, upgrade
from sokovan.db.repository import SchedulerRepository
from sokovan.db.schema import sessions
from sokovan.errors import NoCapacity
from sokovan.records import AgentRow, SessionRequest, Submitted
from sokovan.scheduler.pending import schedule_group, schedule_pending
from sokovan.scheduler.submit import submit_session
from sokovan.scheduler.submit_batch import submit_sessions
from sokovan.types import (
    AgentId,
    ImageConfig,
    KernelStatus,
    ResourceSlot,
    SessionId,
    SessionStatus,
)
from tests.pg import postgres_engine

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.xdist_group("postgres"),
]

IMAGE = "img:1"
CPU_PER_AGENT = 30  # two agents: room for 60 one-CPU sessions
SUBMISSIONS = 100


class GroupRepo(SchedulerRepository):
    """The repository, and the scaling group of the test's own agents."""

    group: str = "default"


@pytest.fixture(scope="module")
def pg() -> Iterator[sa.Engine]:
    with postgres_engine() as engine:
        yield engine


@pytest.fixture(params=["sqlite", "postgresql"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GroupRepo]:
    """A migrated database with two agents of 30 CPUs in a scaling group of the test's own."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'sokovan.db'}")
        upgrade(engine)
    else:
        engine = request.getfixturevalue("pg")
    repo = GroupRepo(engine)
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
    repo.group = group
    yield repo
    if request.param == "sqlite":
        engine.dispose()


def request_of(repo: GroupRepo, queue: bool) -> SessionRequest:
    return SessionRequest(
        image=IMAGE,
        resource_slots=ResourceSlot.from_json({"cpu": 1, "mem": 2**20}),
        scaling_group=repo.group,
        queue=queue,
    )


class Sampler:
    """Reads every agent's occupancy in a loop; keeps the worst it saw."""

    def __init__(self, repo: GroupRepo) -> None:
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


def submit_all(repo: GroupRepo, queue: bool) -> list[Submitted | NoCapacity]:
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


def test_concurrent_submissions_queue_what_does_not_fit(repo: GroupRepo) -> None:
    """SC-AD-004, SC-AD-005: 100 at once on room for 60: 60 placed, 40 PENDING, none over."""
    with Sampler(repo) as sampler:
        results = submit_all(repo, queue=True)
    placed = [
        r for r in results if isinstance(r, Submitted) and r.status == SessionStatus.SCHEDULED
    ]
    pending = [r for r in results if isinstance(r, Submitted) and r.status == SessionStatus.PENDING]
    assert (len(placed), len(pending)) == (60, 40)
    assert sorted(r.queue_position or 0 for r in pending) == list(range(1, 41))
    group = repo.group
    occupied = {a: s for a, s in repo.occupied_by_agent().items() if a.startswith(group)}
    assert {a: s["cpu"] for a, s in occupied.items()} == {
        f"{repo.group}-a1": CPU_PER_AGENT,
        f"{repo.group}-a2": CPU_PER_AGENT,
    }
    assert sampler.samples > 0 and sampler.max_cpu <= CPU_PER_AGENT
    positions = repo.queue_positions()
    assert sorted(positions[r.session_id] for r in pending) == list(range(1, 41))


def test_concurrent_submissions_without_queue_refuse_the_rest(repo: GroupRepo) -> None:
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
    group = repo.group
    assert {a: s for a, s in repo.occupied_by_agent().items() if a.startswith(group)} == {}


def fill(repo: GroupRepo, count: int, cpu: int = 1) -> list[Submitted]:
    """`count` one-kernel submissions one after the other, in submission order."""
    req = request_of(repo, queue=True)
    slots = ResourceSlot.from_json({"cpu": cpu, "mem": 2**20})
    return [submit_session(repo, replace(req, resource_slots=slots)) for _ in range(count)]


def finish(repo: GroupRepo, sessions: list[Submitted]) -> None:
    """Their kernels end, which frees their slots."""
    ids = [k.id for s in repo.sessions_by_ids([x.session_id for x in sessions]) for k in s.kernels]
    repo.transition_kernels(ids, KernelStatus.TERMINATED, list(KernelStatus))


def status_of(repo: GroupRepo, subs: list[Submitted]) -> list[SessionStatus]:
    by_id = {s.id: s.status for s in repo.sessions_by_ids([x.session_id for x in subs])}
    return [by_id[x.session_id] for x in subs]


def test_pending_sessions_start_oldest_first(repo: GroupRepo) -> None:
    """SC-AD-005, SC-AD-006: freed room goes to the oldest PENDING sessions, in order."""
    subs = fill(repo, 70)
    placed, pending = subs[:60], subs[60:]
    assert [s.status for s in placed] == [SessionStatus.SCHEDULED] * 60
    assert [s.queue_position for s in pending] == list(range(1, 11))
    finish(repo, placed[:4])
    done = schedule_group(repo, repo.group)
    assert done.placed == [s.session_id for s in pending[:4]] and done.waiting == 6
    assert status_of(repo, pending) == [SessionStatus.SCHEDULED] * 4 + [SessionStatus.PENDING] * 6
    placed_kernels = [k for s in repo.sessions_by_ids(done.placed) for k in s.kernels]
    assert all(k.agent_id and k.status == KernelStatus.SCHEDULED for k in placed_kernels)
    positions = repo.queue_positions()
    assert [positions[s.session_id] for s in pending[4:]] == list(range(1, 7))
    assert schedule_group(repo, repo.group).placed == []  # nothing freed since


def test_the_head_of_the_queue_is_not_overtaken(repo: GroupRepo) -> None:
    """SC-AD-006: a large waiting session holds the smaller ones behind it until it fits."""
    small = fill(repo, 60)
    big = fill(repo, 1, cpu=20)[0]
    behind = fill(repo, 3)
    assert big.status == SessionStatus.PENDING and big.queue_position == 1
    finish(repo, small[:10])  # 10 free CPUs on one agent or spread: not 20 on one
    assert schedule_group(repo, repo.group).placed in ([], [big.session_id])
    finish(repo, small[10:40])
    done = schedule_group(repo, repo.group)
    assert done.placed[0] == big.session_id
    assert done.placed[1:] == [s.session_id for s in behind]


def test_queues_are_per_scaling_group(repo: GroupRepo) -> None:
    """SC-AD-006: a full group's queue does not hold another group's sessions."""
    fill(repo, 61)
    other = SessionRequest(image=IMAGE, scaling_group="elsewhere")
    waiting = submit_session(repo, other)
    assert (waiting.status, waiting.queue_position) == (SessionStatus.PENDING, 1)
    repo.upsert_agent(
        AgentRow(
            AgentId(f"{repo.group}-elsewhere"),
            "tcp://127.0.0.1:1",
            scaling_group="elsewhere",
            capacity=ResourceSlot.from_json({"cpu": 4, "mem": 2**40}),
        )
    )
    assert waiting.session_id in schedule_pending(repo).placed
    assert repo.queue_positions().get(waiting.session_id) is None


def test_a_request_no_agent_could_hold_is_refused_not_queued(repo: GroupRepo) -> None:
    """SC-AD-005: waiting only makes sense if some agent could ever hold the session."""
    with pytest.raises(NoCapacity) as e:
        fill(repo, 1, cpu=CPU_PER_AGENT + 1)
    assert e.value.field == "resource_slots"
    fill(repo, 60)
    with pytest.raises(NoCapacity):
        submit_session(repo, request_of(repo, queue=False))


def test_cancelling_a_pending_session_frees_its_place(repo: GroupRepo) -> None:
    """SC-AD-007: a PENDING session is cancelled in SQL alone; the queue closes up."""
    subs = fill(repo, 63)
    first, second, third = subs[60:]
    assert repo.cancel_pending([second.session_id], "USER_REQUESTED") == [second.session_id]
    assert repo.cancel_pending([second.session_id], "USER_REQUESTED") == []  # once only
    assert repo.cancel_pending([subs[0].session_id], "USER_REQUESTED") == []  # placed: not pending
    cancelled = repo.get_session(second.session_id)
    assert cancelled.status == SessionStatus.CANCELLED and cancelled.status_info == "USER_REQUESTED"
    assert all(k.status == KernelStatus.CANCELLED and k.agent_id is None for k in cancelled.kernels)
    positions = repo.queue_positions()
    assert (positions[first.session_id], positions[third.session_id]) == (1, 2)


def test_a_named_agent_is_never_filled_past_its_capacity(repo: GroupRepo) -> None:
    """SC-AD-004: naming an agent does not skip the capacity check (11 CPUs on a 30-CPU agent
    that already holds 20 wait; with queue false they are refused)."""
    agent = AgentId(f"{repo.group}-a1")
    named = replace(request_of(repo, queue=True), agents=(agent,))
    for _ in range(20):
        assert submit_session(repo, named).status == SessionStatus.SCHEDULED
    big = replace(named, resource_slots=ResourceSlot.from_json({"cpu": 11}))
    waiting = submit_session(repo, big)
    assert waiting.status == SessionStatus.PENDING
    with pytest.raises(NoCapacity):
        submit_session(repo, replace(big, queue=False))
    assert repo.occupied_by_agent()[agent]["cpu"] == 20
    assert repo.session_status_data(waiting.session_id) == {"requested_agents": [agent]}


def test_sc_ad_004_one_batch_stores_each_session_once_in_the_order_sent(repo: GroupRepo) -> None:
    """SC-AD-004 for one batch message: given 70 requests for 60 CPUs, the second naming the
    first's session id again, when they are submitted together, the repeat is answered with
    the first's status and not stored twice, 60 sessions are placed and the rest wait, and
    the stored sessions are ordered as sent (the pending queue reads oldest first)."""
    first = SessionId(uuid.uuid4())
    requests = [replace(request_of(repo, queue=True), session_id=first)] * 2
    requests += [request_of(repo, queue=True) for _ in range(68)]
    results = submit_sessions(repo, requests)
    assert all(isinstance(r, Submitted) for r in results)
    submitted = [r for r in results if isinstance(r, Submitted)]
    assert submitted[1] == Submitted(first, SessionStatus.SCHEDULED)
    statuses = [r.status for r in submitted[2:]]
    assert statuses.count(SessionStatus.SCHEDULED) == 59
    assert statuses.count(SessionStatus.PENDING) == 9
    with repo.engine.connect() as conn:
        rows = conn.execute(
            sa.select(sessions.c.id)
            .where(sessions.c.scaling_group == repo.group)
            .order_by(sessions.c.created_at)
        ).scalars()
        stored = [SessionId(r) for r in rows]
    assert stored == [first, *(r.session_id for r in submitted[2:])]
