"""The sweep as the coordinator runs it: claim, judge, mark, hand the sessions on."""

from __future__ import annotations

import gc

import sqlalchemy as sa
from redis.asyncio import Redis

from sokovan.scheduler.claims import claim_key
from sokovan.types import (
    HealthCheckStatus,
    KernelId,
    KernelInfo,
    KernelPresence,
    KernelStatus,
    RunStatus,
    RunTrigger,
    SessionStatus,
)
from tests.rig import Rig, add_session, build_rig

SWEEP = "sweep_stale_kernels"
LOCK = "LOCKID_SOKOVAN_TARGET_TERMINATING"


async def test_sc_kh_int_002_sweep_runs_under_the_target_terminating_lock(
    engine: sa.Engine, redis: Redis
) -> None:
    """SC-KH-INT-002: the sweep holds LOCKID_SOKOVAN_TARGET_TERMINATING while it judges
    kernels, and the lock is free again once the run is over."""
    rig = build_rig(engine, redis)
    _, kids = add_session(rig, ["a1", "a1"], status=SessionStatus.RUNNING)
    rig.repo.transition_kernels(kids, KernelStatus.RUNNING, list(KernelStatus))
    held_during: list[str | None] = []

    async def presence_read(*_: object) -> None:
        held_during.append(await rig.coordinator.claims.holder(LOCK))

    original = rig.presence.check_kernel_presence_status_batch

    async def spying(kernel_ids, agent_ids=None):  # type: ignore[no-untyped-def]
        await presence_read()
        return await original(kernel_ids, agent_ids)

    rig.presence.check_kernel_presence_status_batch = spying  # type: ignore[method-assign]
    report = await rig.coordinator.run(SWEEP, RunTrigger.BEAT)
    assert report.status == RunStatus.SUCCEEDED
    assert held_during and held_during[0] is not None
    assert await redis.get(claim_key(LOCK)) is None
    assert rig.coordinator.spec(SWEEP).lock_id == LOCK


async def test_sc_kh_int_001_dead_kernel_terminated_and_its_session_handed_to_terminate(
    rig: Rig,
) -> None:
    """SC-KH-INT-001 at the coordinator: k1 STALE and dead, k2 ALIVE, k3 STALE but running
    (k1 alone in its session; k2 and k3 share another).

    Only k1 becomes TERMINATED (STALE_KERNEL); k2 and k3 stay RUNNING; k1's session moves
    to TERMINATING and the terminate handler is kicked for it (detect kernel termination)."""
    sid, (k1,) = add_session(rig, ["a1"], status=SessionStatus.RUNNING)
    other, (k2, k3) = add_session(rig, ["a1", "a2"], status=SessionStatus.RUNNING)
    rig.repo.transition_kernels([k1, k2, k3], KernelStatus.RUNNING, list(KernelStatus))
    rig.presence.statuses = {
        k1: KernelPresence(HealthCheckStatus.STALE, last_presence=1.0),
        k2: KernelPresence(HealthCheckStatus.HEALTHY, last_presence=2.0),
        k3: KernelPresence(HealthCheckStatus.STALE, last_presence=1.0),
    }
    rig.agents["a1"].script("check_running", False, key=k1)
    rig.agents["a2"].script("check_running", True, key=k3)
    report = await rig.coordinator.run(SWEEP, RunTrigger.BEAT)
    statuses = rig.repo.kernel_statuses([k1, k2, k3])
    assert statuses == {
        k1: KernelStatus.TERMINATED,
        k2: KernelStatus.RUNNING,
        k3: KernelStatus.RUNNING,
    }
    assert rig.repo.get_session(sid).status == SessionStatus.TERMINATING
    assert rig.repo.get_session(sid).status_info == "ABNORMAL_TERMINATION"
    assert rig.repo.get_session(other).status == SessionStatus.RUNNING
    assert ("terminate_sessions", RunTrigger.EVENT, [str(sid)]) in rig.kicker.kicks
    run = rig.ledger.get_run(report.run_id)  # type: ignore[arg-type]
    assert (run.requested, run.succeeded, run.failed, run.skipped) == (3, 3, 0, 0)
    evidence = {
        KernelId(__import__("uuid").UUID(i.item_id)): i.evidence for i in rig.ledger.items(run.id)
    }
    assert evidence[k1]["verdict"] == "dead" and evidence[k1]["check_running"] == "False"
    assert evidence[k3]["verdict"] == "alive"
    assert k2 not in evidence  # healthy in stage 1: counted, no row of its own


async def test_sweep_loads_the_same_kernels_as_kernels_in_with_only_what_it_reads(
    rig: Rig,
) -> None:
    """The sweep's lean load gives the kernels, order, ids, agent, status and scaling group
    of `kernels_in`, honouring `only` and `limit`."""
    for agents in (["a1"], ["a1", "a2"], ["a2"]):
        _, kids = add_session(rig, agents, status=SessionStatus.RUNNING)
        rig.repo.transition_kernels(kids, KernelStatus.RUNNING, list(KernelStatus))
    full = rig.repo.kernels_in([KernelStatus.RUNNING])

    lean = rig.repo.kernels_to_sweep([KernelStatus.RUNNING])

    def seen(k: KernelInfo) -> tuple[object, ...]:
        return (k.id, k.session_id, k.agent_id, k.status, k.scaling_group)

    assert [seen(k) for k in lean] == [seen(k) for k in full] and len(lean) == 4
    assert all(k.status is KernelStatus.RUNNING for k in lean)
    some = rig.repo.kernels_to_sweep([KernelStatus.RUNNING], only=[full[3].id, full[1].id])
    assert [k.id for k in some] == [full[1].id, full[3].id]
    assert [k.id for k in rig.repo.kernels_to_sweep([KernelStatus.RUNNING], limit=2)] == [
        k.id for k in full[:2]
    ]


async def test_sweep_holds_off_the_cyclic_collector_only_while_it_runs(rig: Rig) -> None:
    """The collector is off while the sweep judges its kernels and on again once the run ends."""
    _, kids = add_session(rig, ["a1"], status=SessionStatus.RUNNING)
    rig.repo.transition_kernels(kids, KernelStatus.RUNNING, list(KernelStatus))
    seen: list[bool] = []
    original = rig.presence.check_kernel_presence_status_batch

    async def spying(kernel_ids, agent_ids=None):  # type: ignore[no-untyped-def]
        seen.append(gc.isenabled())
        return await original(kernel_ids, agent_ids)

    rig.presence.check_kernel_presence_status_batch = spying  # type: ignore[method-assign]
    scan = rig.presence.scan_for_suspects

    async def spying_scan(kernel_ids, agent_ids=()):  # type: ignore[no-untyped-def]
        seen.append(gc.isenabled())
        return await scan(kernel_ids, agent_ids)

    rig.presence.scan_for_suspects = spying_scan  # type: ignore[method-assign]
    assert gc.isenabled()

    report = await rig.coordinator.run(SWEEP, RunTrigger.BEAT)

    assert report.status == RunStatus.SUCCEEDED
    # Two reads: every kernel a page at a time, then the suspects again in full.
    assert seen == [False, False]
    assert gc.isenabled()


async def test_braked_sweep_is_recorded_held_with_the_reason(rig: Rig) -> None:
    """Given the presence store is unreadable, the sweep kills nothing and its run ends `held`
    (not `succeeded`), its note saying why, so a scan of `runs list` for trouble finds it."""
    from sokovan.errors import PresenceUnavailable

    sid, kids = add_session(rig, ["a1"], status=SessionStatus.RUNNING)
    rig.repo.transition_kernels(kids, KernelStatus.RUNNING, list(KernelStatus))

    async def unreadable(*_: object, **__: object) -> None:
        raise PresenceUnavailable("connection refused")

    rig.presence.check_kernel_presence_status_batch = unreadable  # type: ignore[method-assign,assignment]
    rig.presence.scan_for_suspects = unreadable  # type: ignore[method-assign,assignment]
    report = await rig.coordinator.run(SWEEP, RunTrigger.MANUAL)

    assert report.status == RunStatus.HELD
    assert report.run_id is not None
    run = rig.ledger.get_run(report.run_id)
    assert run.status == RunStatus.HELD and run.finished_at is not None
    assert run.note is not None and "presence unavailable" in run.note
    assert (run.succeeded, run.skipped) == (0, 1)
    assert rig.repo.get_session(sid).status == SessionStatus.RUNNING
