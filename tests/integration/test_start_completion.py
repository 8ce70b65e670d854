"""The start handler's completion and the bulk moves behind it, on real SQL.

Recording a create fan-out's outcomes moves kernels with their container ids in the
database; these are the SQL halves of SC-LA-005's bulk moves, and placement's occupancy
counted in SQL.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from sokovan.db.ledger import RunLedger
from sokovan.db.offload import OffloadedLedger, OffloadedStore
from sokovan.db.repository import NewKernel, SchedulerRepository
from sokovan.db.schema import kernels as kernels_table
from sokovan.ports import FanOut
from sokovan.scheduler.handlers import start_sessions
from sokovan.scheduler.handlers.base import moved_of
from sokovan.scheduler.outcomes import record_outcomes
from sokovan.stubs.context import stub_context
from sokovan.stubs.fanout import RefusingFanOut
from sokovan.types import (
    AgentId,
    ItemOutcome,
    KernelId,
    KernelStatus,
    Operation,
    ResourceSlot,
    RunTrigger,
    SessionId,
    SessionStatus,
)

_NO_FANOUT: FanOut = RefusingFanOut("completion dispatches nothing")


async def test_start_completion_moves_every_created_kernel_at_once(engine: sa.Engine) -> None:
    """Recording a create fan-out's outcomes moves created kernels RUNNING with their
    container ids and failed ones ERROR; the completion sends failed sessions to
    termination, in bulk."""
    repo = SchedulerRepository(engine)
    made = [_creating_session(repo, kernels=2) for _ in range(4)]
    outcomes = [
        ItemOutcome(
            str(k),
            "a1",
            ok=sid != made[3][0],
            error=None if sid != made[3][0] else "AgentError: disk full",
            detail={"session_id": str(sid), "creation_info": {"container_id": f"c-{k}"}},
        )
        for sid, kids in made
        for k in kids
    ]
    spec = start_sessions.build(stub_context(OffloadedStore(repo), fanout=_NO_FANOUT))
    ledger = OffloadedLedger(RunLedger(engine))
    run_id = await ledger.open_run(start_sessions.NAME, RunTrigger.BEAT)

    _, recorded = await record_outcomes(
        ledger, start_sessions.DECLARATION.transitions, run_id, outcomes
    )
    await spec.complete[Operation.CREATE_KERNELS](run_id, recorded, moved_of(recorded))

    with engine.connect() as conn:
        rows = {
            KernelId(r.id): (r.status, r.container_id)
            for r in conn.execute(sa.select(kernels_table.c.id, kernels_table.c.status,
                                            kernels_table.c.container_id))
        }  # fmt: skip
    for sid, kids in made[:3]:
        assert repo.get_session(sid).status == SessionStatus.RUNNING
        assert all(rows[k] == (str(KernelStatus.RUNNING), f"c-{k}") for k in kids)
    failed_sid, failed_kids = made[3]
    assert repo.get_session(failed_sid).status == SessionStatus.TERMINATING
    assert all(rows[k][1] is None for k in failed_kids)


def test_bulk_kernel_move_skips_kernels_in_other_statuses(engine: sa.Engine) -> None:
    """transition_kernels_with_values moves only kernels in the allowed statuses."""
    repo = SchedulerRepository(engine)
    (_, moving), (_, gone) = _creating_session(repo, 2), _creating_session(repo, 1)
    repo.transition_kernels(gone, KernelStatus.TERMINATING, [KernelStatus.CREATING])

    moved = repo.transition_kernels_with_values(
        {k: {"container_id": f"c-{k}"} for k in [*moving, *gone]},
        KernelStatus.RUNNING,
        [KernelStatus.CREATING],
    )

    assert sorted(map(str, moved)) == sorted(map(str, moving))
    statuses = repo.kernel_statuses([*moving, *gone])
    assert [statuses[k] for k in moving] == [KernelStatus.RUNNING] * 2
    assert statuses[gone[0]] == KernelStatus.TERMINATING


def _creating_session(repo: SchedulerRepository, kernels: int) -> tuple[SessionId, list[KernelId]]:
    sid = SessionId(uuid.uuid4())
    kids = [KernelId(uuid.uuid4()) for _ in range(kernels)]
    repo.create_session(
        session_id=sid,
        name="s",
        status=SessionStatus.CREATING,
        kernels_=[
            NewKernel(
                k,
                AgentId("a1"),
                "image1",
                ResourceSlot.from_json({"cpu": "1"}),
                cluster_idx=i + 1,
                cluster_hostname=f"k{i + 1}",
            )
            for i, k in enumerate(kids)
        ],
    )
    return sid, kids


def test_placement_occupancy_counted_in_sql_matches_the_row_by_row_sum(
    engine: sa.Engine,
) -> None:
    """Submission's occupancy: per agent, the same sums as occupied_by_agent.

    Given kernels with different slot sets on two agents, one without an agent and
    one terminated, the grouped count gives the same totals as the per-kernel sum.
    """
    repo = SchedulerRepository(engine)
    slot_sets = [{"cpu": "1", "mem": "1024"}, {"cpu": "2.5", "cuda.shares": "0.5"}]
    for i, agent in enumerate(["a1", "a1", "a2", None, "a2", "a1"]):
        sid = SessionId(uuid.uuid4())
        kernel = NewKernel(
            KernelId(uuid.uuid4()),
            None if agent is None else AgentId(agent),
            "image1",
            ResourceSlot.from_json(slot_sets[i % 2]),
        )
        status = SessionStatus.TERMINATED if i == 4 else SessionStatus.RUNNING
        repo.create_session(session_id=sid, name="s", kernels_=[kernel], status=status)

    grouped = repo.occupied_by_agent_grouped()

    assert grouped == repo.occupied_by_agent()
    assert grouped["a1"] == ResourceSlot.from_json({"cpu": "6", "mem": "1024", "cuda.shares": "1"})
    assert grouped["a2"] == ResourceSlot.from_json({"cpu": "1", "mem": "1024"})
