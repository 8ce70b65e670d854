"""Loading a sweep's targets a page at a time: totals per group, only suspects kept."""

from __future__ import annotations

from datetime import timedelta

from sokovan.db.schema import kernels
from sokovan.scheduler.sweep_load import load_sweep_targets
from sokovan.types import (
    HealthCheckStatus,
    KernelId,
    KernelPresence,
    KernelStatus,
    RunStatus,
    RunTrigger,
    utcnow,
)
from sokovan.types import SessionStatus as S
from tests.rig import Rig, add_session

FRESH = KernelPresence(HealthCheckStatus.HEALTHY, 0.0)
STALE = KernelPresence(HealthCheckStatus.STALE, 0.0)


def running(rig: Rig, count: int) -> list[KernelId]:
    kids: list[KernelId] = []
    for _ in range(count):
        _, ks = add_session(rig, ["a1"], status=S.RUNNING)
        kids += ks
    rig.repo.transition_kernels(kids, KernelStatus.RUNNING, list(KernelStatus))
    return kids


async def test_pages_count_every_kernel_and_keep_only_missing_or_stale_ones(rig: Rig) -> None:
    """SC-SK-001 at scale: 7 kernels read 3 at a time; the fresh ones are counted, not kept."""
    kids = running(rig, 7)
    rig.presence.statuses = {k: FRESH for k in kids[:4]}
    rig.presence.statuses[kids[4]] = STALE
    targets = await load_sweep_targets(rig.store, rig.presence, [KernelStatus.RUNNING], page_size=3)
    assert targets.pages == 3 and targets.total == 7
    group = targets.groups["default"]
    assert group.total == 7
    assert {k.id for k in group.suspects} == set(kids[4:])
    assert all(k.agent_id == "a1" and k.status is KernelStatus.RUNNING for k in group.suspects)
    # One scan per page; the agent is stamped with the first page it appears on only, so its
    # stamp is never later than the last_check of any of its kernels.
    assert [len(b) for b in rig.presence.scans] == [3, 3, 1]
    assert rig.presence.agent_scans == [["a1"], [], []]


async def test_a_sweep_counts_fresh_kernels_without_a_row_and_brakes_on_the_whole_group(
    rig: Rig,
) -> None:
    """The ratio brake weighs the suspects against all kernels, not against themselves."""
    kids = running(rig, 20)
    rig.presence.statuses = {k: FRESH for k in kids[:10]}
    report = await rig.coordinator.run("sweep_stale_kernels", RunTrigger.MANUAL)
    assert report.run_id is not None
    run = rig.ledger.get_run(report.run_id)
    assert run.requested == 20
    # 10 of 20 missing is a ratio of 0.5, not above it: judged, not braked.
    assert report.status != RunStatus.HELD
    rig.presence.statuses = {k: FRESH for k in kids[:9]}
    held = await rig.coordinator.run("sweep_stale_kernels", RunTrigger.MANUAL)
    assert held.status == RunStatus.HELD
    assert held.run_id is not None
    braked = rig.ledger.get_run(held.run_id)
    assert (braked.requested, braked.skipped) == (20, 11)


def test_pages_from_the_driver_are_plain_rows_with_the_databases_id_text(rig: Rig) -> None:
    """A full read comes a page at a time as (id text, agent, group) tuples, every RUNNING
    kernel once, the id as SQLite holds it (32 hex digits, which the presence scan takes);
    a budget reads the oldest first, no more than it allows."""
    kids = running(rig, 5)
    add_session(rig, ["a2"])  # a TERMINATING session and kernel: never read
    pages = list(rig.repo.sweep_pages([KernelStatus.RUNNING], page_size=2))
    assert [len(p) for p in pages] == [2, 2, 1]
    rows = [row for page in pages for row in page]
    assert all(type(row) is tuple for row in rows)
    assert sorted(r[0] for r in rows) == sorted(k.hex for k in kids)
    assert {(r[1], r[2]) for r in rows} == {("a1", "default")}
    with rig.engine.begin() as conn:
        for age, kid in enumerate(kids):
            conn.execute(
                kernels.update()
                .where(kernels.c.id == kid)
                .values(created_at=utcnow() - timedelta(minutes=10 - age))
            )
    budgeted = list(rig.repo.sweep_pages([KernelStatus.RUNNING], page_size=10, limit=2))
    assert [r[0] for page in budgeted for r in page] == [k.hex for k in kids[:2]]
