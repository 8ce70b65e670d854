"""The sweep converges (SC-CV-005, SC-CV-010) as the coordinator runs it, over real SQLite."""

from __future__ import annotations

from sokovan.db.ledger import RunLedger
from sokovan.db.stats import RunStats
from sokovan.errors import AgentRemoteError
from sokovan.metrics import registry_for
from sokovan.scheduler.sweep_brake import RatioBrake
from sokovan.types import (
    HealthCheckStatus,
    KernelId,
    KernelPresence,
    KernelStatus,
    RunStatus,
    RunTrigger,
    SessionStatus,
)
from tests.rig import Rig, add_session

SWEEP = "sweep_stale_kernels"
FRESH = KernelPresence(HealthCheckStatus.ALIVE, last_presence=1000.0)


def running(rig: Rig, agents: list[str]) -> list[KernelId]:
    """One RUNNING single-kernel session per entry of `agents`; their kernel ids."""
    kids: list[KernelId] = []
    for agent in agents:
        _, (kid,) = add_session(rig, [agent], status=SessionStatus.RUNNING)
        rig.repo.transition_kernels([kid], KernelStatus.RUNNING, list(KernelStatus))
        kids.append(kid)
    return kids


def status_of(rig: Rig, kids: list[KernelId]) -> dict[KernelId, KernelStatus]:
    return {k.id: k.status for k in rig.repo.kernels_in(list(KernelStatus)) if k.id in kids}


def unverified_gauge(rig: Rig) -> dict[str, float]:
    registry = registry_for(RunLedger(rig.engine), RunStats(rig.engine), handlers=[SWEEP])
    return {
        s.labels["reason"]: s.value
        for m in registry.collect()
        if m.name == "sokovan_sweep_unverified_kernels"
        for s in m.samples
    }


async def test_sc_cv_005_unverifiable_kernels_make_the_run_partial_with_the_count(
    rig: Rig,
) -> None:
    """SC-CV-005: a kernel whose agent cannot be asked is skipped, and the run says so.

    Given four RUNNING kernels without presence: k1 on a1 (answers False), k2 on a1
    (answers True), k3 on an agent nobody can reach, k4 on a2 whose address another agent
    now serves (it refuses a2's id: AgentIdNotFoundError),
    When the sweep runs,
    Then k1 is TERMINATED, k2 stays RUNNING, k3 and k4 are skipped and stay RUNNING; the run
    is `partial` (not `succeeded`) with "2 kernel(s) unverified" in its note, and the gauge
    sokovan_sweep_unverified_kernels counts one `error` and one `identity`.
    """
    k1, k2, k3, k4 = running(rig, ["a1", "a1", "a-gone", "a2"])
    rig.agents["a1"].script("check_running", lambda kid: kid == k2)
    rig.agents["a2"].script(
        "check_running", AgentRemoteError("AgentIdNotFoundError", "not served", "check_running")
    )

    report = await rig.coordinator.run(SWEEP, RunTrigger.BEAT)

    assert report.status == RunStatus.PARTIAL and report.run_id is not None
    run = rig.ledger.get_run(report.run_id)
    assert run.status == RunStatus.PARTIAL
    assert run.note is not None and "1 stale kernel(s) terminated" in run.note
    assert "2 kernel(s) unverified" in run.note
    assert (run.succeeded, run.failed, run.skipped) == (2, 0, 2)
    items = {i.item_id: i for i in rig.ledger.items(run.id)}
    assert items[str(k3)].skipped and (items[str(k3)].error or "").startswith("unverified: error")
    assert items[str(k4)].skipped and items[str(k4)].error == "unverified: identity"
    states = status_of(rig, [k1, k2, k3, k4])
    assert states[k1] is KernelStatus.TERMINATED
    assert {states[k] for k in (k2, k3, k4)} == {KernelStatus.RUNNING}
    gauge = unverified_gauge(rig)
    assert gauge == {"identity": 1.0, "error": 1.0, "no_answer": 0.0, "no_agent": 0.0}


async def test_sc_cv_005_a_run_that_verified_everything_still_succeeds(rig: Rig) -> None:
    """SC-CV-005: partial is for the unverified only; a sweep that decided every suspect
    succeeds, and the gauge falls back to zero."""
    (k1,) = running(rig, ["a-gone"])
    first = await rig.coordinator.run(SWEEP, RunTrigger.BEAT)
    assert first.status == RunStatus.PARTIAL
    assert unverified_gauge(rig)["error"] == 1.0
    rig.presence.statuses = {k1: FRESH}

    second = await rig.coordinator.run(SWEEP, RunTrigger.MANUAL)

    assert second.status == RunStatus.SUCCEEDED
    assert sum(unverified_gauge(rig).values()) == 0.0


async def test_sc_cv_010_mass_death_is_reaped_at_a_bounded_rate(rig: Rig) -> None:
    """SC-CV-010: most kernels dead at once (every agent restarted) are reaped, a share a run.

    Given 20 RUNNING kernels on a1 and a2, 15 without presence, of which the agents answer
    True for two (kept) and False for the rest; a brake from 10 kernels at ratio 0.5 that
    reaps at most a fifth of the group per run,
    When sweeps run one after another,
    Then each braked run reaps no more than its allowance and ends `partial` noting what it
    left for the next runs; within six runs every dead kernel is TERMINATED, and the kept
    and fresh kernels are still RUNNING.
    """
    kids = running(rig, ["a1", "a2"] * 10)
    fresh, kept = kids[:5], [kids[5], kids[6]]
    rig.presence.statuses = {k: FRESH for k in fresh}
    for agent in rig.agents.values():
        agent.script("check_running", lambda kid: kid in kept)
    dead = [k for k in kids if k not in fresh and k not in kept]
    brake = RatioBrake(0.5, 10, 0.2)

    runs = 0
    while any(s is KernelStatus.RUNNING for s in status_of(rig, dead).values()):
        before = [k for k, s in status_of(rig, kids).items() if s is KernelStatus.RUNNING]
        report = await rig.coordinator.run(SWEEP, RunTrigger.BEAT)
        runs += 1
        assert report.run_id is not None and runs <= 6, report
        after = [k for k, s in status_of(rig, kids).items() if s is KernelStatus.RUNNING]
        run = rig.ledger.get_run(report.run_id)
        if run.note and "brake" in run.note:
            assert len(before) - len(after) <= brake.allowance(len(before))
            assert run.status == RunStatus.PARTIAL and "left for the next runs" in run.note
        if runs == 1:
            assert len(before) - len(after) == 4 and "reaping at most 4 per run" in (run.note or "")

    assert runs >= 3
    states = status_of(rig, kids)
    assert all(states[k] is KernelStatus.TERMINATED for k in dead)
    assert all(states[k] is KernelStatus.RUNNING for k in [*fresh, *kept])


async def test_sc_cv_010_brake_holds_when_agents_cannot_be_asked_or_confirm_none(
    rig: Rig,
) -> None:
    """SC-CV-010: the brake still holds when no agent can be asked, or none confirms a death.

    Given 12 RUNNING kernels, 9 without presence,
    When their agents are unreachable, Then the run is `held` ("no agent could be asked");
    When the agents answer and report every one running (a presence outage), Then the run is
    `held` again and nothing is TERMINATED.
    """
    kids = running(rig, ["a1", "a2"] * 6)
    rig.presence.statuses = {k: FRESH for k in kids[:3]}
    agents = dict(rig.pool.clients)
    rig.pool.clients.clear()

    unreachable = await rig.coordinator.run(SWEEP, RunTrigger.BEAT)

    assert unreachable.status == RunStatus.HELD and unreachable.run_id is not None
    note = rig.ledger.get_run(unreachable.run_id).note or ""
    assert "9 of 12 kernels look stale" in note and "no agent could be asked" in note
    rig.pool.clients.update(agents)

    outage = await rig.coordinator.run(SWEEP, RunTrigger.BEAT)

    assert outage.status == RunStatus.HELD and outage.run_id is not None
    assert "report 9 of them running" in (rig.ledger.get_run(outage.run_id).note or "")
    assert set(status_of(rig, kids).values()) == {KernelStatus.RUNNING}


def test_brake_allowance_is_a_share_of_the_group_and_at_least_one() -> None:
    """The bounded rate: a share of the group per run, never zero unless turned off."""
    assert RatioBrake(0.5, 10, 0.2).allowance(100) == 20
    assert RatioBrake(0.5, 10, 0.2).allowance(4) == 1
    assert RatioBrake(0.5, 10, 0.0).allowance(100) == 0
