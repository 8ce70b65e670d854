"""Leases, fencing and outcome-with-state recording at coordinator level (real Valkey, SQL)."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis

from sokovan.scheduler.coordinator import LEASE_LAPSED
from sokovan.scheduler.handlers.terminate_sessions import LOCK_ID, NAME
from sokovan.scheduler.leases import kept
from sokovan.scheduler.outcomes import record_batch
from sokovan.types import (
    ItemOutcome,
    KernelId,
    KernelStatus,
    Operation,
    RunId,
    RunStatus,
    RunTrigger,
    Verdict,
)
from tests.rig import Rig, add_session, build_rig

pytestmark = pytest.mark.integration

LIFETIME = 0.4  # seconds: short, so a lease lapses within the test


@pytest.fixture
async def short(engine: sa.Engine, redis: Redis) -> Rig:
    return build_rig(engine, redis, claim_lifetime=LIFETIME)


def statuses(rig: Rig, kids: list[KernelId]) -> set[KernelStatus]:
    return set(rig.repo.kernel_statuses(kids).values())


async def held_run(rig: Rig) -> tuple[RunId, list[ItemOutcome]]:
    """A terminate run whose fan-out ran but whose results are held (its worker stalled)."""
    rig.fanout.hold = True
    report = await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert report.run_id is not None and report.status == RunStatus.RUNNING
    ((_, _, outcomes),) = rig.fanout.held
    rig.fanout.held.clear()
    rig.fanout.hold = False
    return report.run_id, list(outcomes)


async def test_sc_rc_003_a_lapsed_lease_is_abandoned_by_the_next_start_at_once(short: Rig) -> None:
    """SC-RC-003: a run whose holder stopped renewing (stalled, nothing alive renews it)
    is abandoned by the next start as soon as its short lease lapsed, not after the run
    deadline; the next run re-plans every kernel and finishes them."""
    _, kids = add_session(short, ["a1", "a2"])
    first, _ = await held_run(short)
    assert (await short.coordinator.run(NAME, RunTrigger.BEAT)).status == RunStatus.SKIPPED

    await asyncio.sleep(LIFETIME * 2)
    second = await short.coordinator.run(NAME, RunTrigger.BEAT)

    run = short.ledger.get_run(first)
    assert (run.status, run.note) == (RunStatus.ABANDONED, LEASE_LAPSED)
    assert second.run_id != first and second.status == RunStatus.SUCCEEDED
    assert short.ledger.get_run(RunId(second.run_id or 0)).succeeded == 2
    assert statuses(short, kids) == {KernelStatus.TERMINATED}


async def test_sc_rc_003_recovery_tick_abandons_a_lapsed_lease(short: Rig) -> None:
    """SC-RC-003: the recovery tick abandons a run whose lease lapsed, deadline or not."""
    add_session(short, ["a1"])
    first, _ = await held_run(short)
    assert await short.coordinator.recover() == []  # lease still held
    await asyncio.sleep(LIFETIME * 2)
    assert await short.coordinator.recover() == [first]
    assert short.ledger.get_run(first).status == RunStatus.ABANDONED


async def test_sc_rc_003_a_holder_that_lost_its_lease_can_neither_renew_nor_record(
    short: Rig,
) -> None:
    """SC-RC-003: the stalled holder resumes after its run was abandoned and re-planned:
    its renewal fails, its outcomes land in the abandoned run as evidence only (counted
    false, no kernel moved by them), and every kernel is counted once, by the next run."""
    _, kids = add_session(short, ["a1", "a2"])
    first, late = await held_run(short)
    token = short.ledger.get_run(first).claim_token
    assert token is not None
    await asyncio.sleep(LIFETIME * 2)
    short.fanout.hold = True
    second = await short.coordinator.run(NAME, RunTrigger.BEAT)
    assert second.run_id is not None

    assert not await short.coordinator.claims.renew(LOCK_ID, token, LIFETIME)
    async with kept(short.coordinator.claims, LOCK_ID, token, LIFETIME) as lease:
        assert lease.lost
    recorded, _ = await record_batch(
        short.coordinator, short.runs, short.store, first, Operation.DESTROY_KERNELS, late
    )

    assert (recorded.counted, recorded.inserted, dict(recorded.moved)) == (False, 2, {})
    assert statuses(short, kids) == {KernelStatus.TERMINATING}  # left to the next run
    short.fanout.hold = False
    await short.fanout.release()
    runs = [short.ledger.get_run(first), short.ledger.get_run(second.run_id)]
    assert [r.succeeded for r in runs] == [0, 2]
    assert [i.counted for i in short.ledger.items(first)] == [False, False]
    assert statuses(short, kids) == {KernelStatus.TERMINATED}


async def test_sc_rc_003_live_work_renews_the_lease(short: Rig) -> None:
    """SC-RC-003: while work renews it, a lease outlives many lifetimes."""
    token = await short.coordinator.claims.claim(LOCK_ID, LIFETIME)
    assert token is not None
    async with kept(short.coordinator.claims, LOCK_ID, token, LIFETIME) as lease:
        await asyncio.sleep(LIFETIME * 4)
        assert not lease.lost
    assert await short.coordinator.claims.holder(LOCK_ID) == token
    await asyncio.sleep(LIFETIME * 2)
    assert await short.coordinator.claims.holder(LOCK_ID) is None


async def test_sc_rc_004_a_recorded_batch_moves_its_kernels_in_the_same_transaction(
    short: Rig,
) -> None:
    """SC-RC-004: a destroy batch recorded before its worker died has its kernels TERMINATED
    (one transaction with the outcomes); the run is abandoned when its lease lapses and the
    next run plans only the kernels of the batch that never reported."""
    _, kids = add_session(short, ["a1", "a1", "a2"])
    first, outcomes = await held_run(short)
    done = [o for o in outcomes if o.agent_id == "a1"]
    recorded, _ = await record_batch(
        short.coordinator, short.runs, short.store, first, Operation.DESTROY_KERNELS, done
    )
    assert recorded.counted and sorted(map(str, recorded.moved[Verdict.OK])) == sorted(
        map(str, kids[:2])
    )
    assert statuses(short, kids[:2]) == {KernelStatus.TERMINATED}
    await asyncio.sleep(LIFETIME * 2)

    second = await short.coordinator.run(NAME, RunTrigger.BEAT)

    assert short.ledger.get_run(first).succeeded == 2
    nxt = short.ledger.get_run(RunId(second.run_id or 0))
    assert (nxt.requested, nxt.succeeded) == (1, 1)
    assert [i.item_id for i in short.ledger.items(nxt.id)] == [str(kids[2])]
