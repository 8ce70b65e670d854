"""The coordinator and the run ledger: counts, triggers, claims, budgets, recovery, pause.

Real SQLite built by the migrations, real Valkey for claims and fan-out tracking, fake
agents behind the pool port, and an in-process fan-out that completes runs the way the
Celery chord body does (coordinator.complete with every batch's outcomes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis

from sokovan.db.engine import create_engine
from sokovan.db.ledger import RunLedger
from sokovan.db.schema import sessions as sessions_table
from sokovan.errors import DispatchError
from sokovan.scheduler.claims import claim_key
from sokovan.scheduler.handlers.terminate_sessions import LOCK_ID, NAME
from sokovan.types import (
    HealthCheckStatus,
    ItemOutcome,
    KernelId,
    KernelPresence,
    KernelStatus,
    Operation,
    RunId,
    RunStatus,
    RunTrigger,
    SessionId,
    SessionStatus,
    utcnow,
)
from tests.rig import Rig, add_session, build_rig

SWEEP = "sweep_stale_kernels"


def kernel_status(rig: Rig, kid: KernelId) -> KernelStatus:
    return rig.repo.kernel_statuses([kid])[kid]


# SC-RL-001 ------------------------------------------------------------------


async def test_sc_rl_001_run_recorded_with_counts(rig: Rig) -> None:
    """SC-RL-001: 2 sessions, 5 kernels, one without agent, destroy fails on one:
    the run ends partial with 5/3/1/1 and one outcome row per kernel."""
    s1, (k1, k2, k3) = add_session(rig, ["a1", "a1", None])
    s2, (k4, k5) = add_session(rig, ["a2", "a2"])
    rig.agents["a2"].script("destroy_kernel", RuntimeError("container stuck"), key=k4)

    report = await rig.coordinator.run(NAME, RunTrigger.BEAT)

    assert report.run_id is not None and report.status == RunStatus.PARTIAL
    run = rig.ledger.get_run(report.run_id)
    assert (run.status, run.requested, run.succeeded, run.failed, run.skipped) == (
        RunStatus.PARTIAL,
        5,
        3,
        1,
        1,
    )
    assert run.finished_at is not None and run.finished_at >= run.started_at
    assert run.operation == "destroy_kernels" and run.fanout_id
    items = {i.item_id: i for i in rig.ledger.items(run.id)}
    assert set(items) == {str(k) for k in (k1, k2, k3, k4, k5)}
    assert items[str(k4)].ok is False and "container stuck" in (items[str(k4)].error or "")
    assert items[str(k3)].skipped and items[str(k3)].agent_id is None
    assert items[str(k1)].agent_id == "a1" and items[str(k1)].ok
    assert sorted(map(str, rig.destroyed())) == sorted(str(k) for k in (k1, k2, k4, k5))
    # Status moves from the outcomes: the failed kernel stays for the next run.
    assert kernel_status(rig, k4) == KernelStatus.TERMINATING
    assert kernel_status(rig, k3) == KernelStatus.CANCELLED
    assert rig.repo.get_session(s1).status == SessionStatus.TERMINATED
    assert rig.repo.get_session(s2).status == SessionStatus.TERMINATING
    assert await rig.redis.get(claim_key(LOCK_ID)) is None


# SC-RL-002 ------------------------------------------------------------------


async def test_sc_rl_002_empty_run_records_zeros_and_calls_no_agent(rig: Rig) -> None:
    """SC-RL-002: no targets -> a succeeded run with all counts 0 and no agent call."""
    add_session(rig, ["a1"], status=SessionStatus.RUNNING)  # not a target of terminate

    report = await rig.coordinator.run(NAME, RunTrigger.BEAT)

    assert report.run_id is not None
    run = rig.ledger.get_run(report.run_id)
    assert run.status == RunStatus.SUCCEEDED
    assert (run.requested, run.succeeded, run.failed, run.skipped) == (0, 0, 0, 0)
    assert rig.ledger.items(run.id) == []
    assert rig.agent_calls() == 0 and rig.fanout.inner.records == []


async def test_sc_rl_002_idle_beat_ticks_leave_no_row_when_so_configured(
    engine: sa.Engine, redis: Redis
) -> None:
    """SC-RL-002 (configured to skip empty runs): an idle beat tick records nothing and frees
    its claim; a manual start with nothing to do is still recorded."""
    rig = build_rig(engine, redis)
    rig.coordinator.record_empty_beat_runs = False

    report = await rig.coordinator.run(NAME, RunTrigger.BEAT)

    assert report.run_id is None and report.status == RunStatus.SUCCEEDED
    assert rig.ledger.list_runs(NAME) == []
    assert await redis.get(claim_key(LOCK_ID)) is None
    manual = await rig.coordinator.run(NAME, RunTrigger.MANUAL)
    assert manual.run_id is not None and rig.ledger.get_run(manual.run_id).requested == 0


# SC-RL-003 ------------------------------------------------------------------


async def test_sc_rl_003_dispatch_failure_fails_the_run_and_next_start_works(rig: Rig) -> None:
    """SC-RL-003: the broker refuses the fan-out -> run failed with the error; the kernels
    stay TERMINATING and the next start re-plans and succeeds."""
    _, kids = add_session(rig, ["a1", "a2"])
    rig.fanout.refuse = DispatchError("broker refused the fan-out: connection refused")

    first = await rig.coordinator.run(NAME, RunTrigger.BEAT)

    assert first.status == RunStatus.FAILED and first.run_id is not None
    failed = rig.ledger.get_run(first.run_id)
    assert failed.status == RunStatus.FAILED and failed.finished_at is not None
    assert failed.error and "connection refused" in failed.error
    assert all(kernel_status(rig, k) == KernelStatus.TERMINATING for k in kids)

    rig.fanout.refuse = None
    second = await rig.coordinator.run(NAME, RunTrigger.BEAT)

    assert second.status == RunStatus.SUCCEEDED and second.run_id != first.run_id
    assert all(kernel_status(rig, k) == KernelStatus.TERMINATED for k in kids)


async def test_sc_rl_003_lost_header_task_fails_the_run(rig: Rig) -> None:
    """SC-RL-003: the chord body is never reached (errback): failed, error kept, claim freed."""
    add_session(rig, ["a1"])
    rig.fanout.hold = True
    started = await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert started.status == RunStatus.RUNNING and started.run_id is not None
    rig.fanout.held.clear()  # the header task is lost: no chord body will come

    record = await rig.coordinator.fail(started.run_id, "fan-out lost a task: WorkerLostError()")

    assert record is not None and record.status == RunStatus.FAILED
    assert record.error == "fan-out lost a task: WorkerLostError()"
    assert await rig.redis.get(claim_key(LOCK_ID)) is None
    rig.fanout.hold = False
    again = await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert again.status == RunStatus.SUCCEEDED


# SC-RL-004 ------------------------------------------------------------------


async def test_sc_rl_004_trigger_types_recorded(rig: Rig) -> None:
    """SC-RL-004: beat, manual and api starts record their trigger."""
    for trigger in (RunTrigger.BEAT, RunTrigger.MANUAL, RunTrigger.API):
        await rig.coordinator.run(NAME, trigger)
    assert [r.trigger for r in rig.ledger.list_runs(NAME)] == ["api", "manual", "beat"]


async def test_sc_rl_004_event_run_touches_only_affected_sessions(rig: Rig) -> None:
    """SC-RL-004: a kernel found dead by the sweep kicks an `event` run of terminate scoped
    to its session; that run destroys only that session's kernels."""
    dying, (dead, sibling) = add_session(rig, ["a1", "a1"], status=SessionStatus.RUNNING)
    bystander, (other,) = add_session(rig, ["a2"])  # TERMINATING, not affected
    rig.presence.statuses[sibling] = KernelPresence(HealthCheckStatus.HEALTHY)
    rig.agents["a1"].script("check_running", False, key=dead)

    sweep = await rig.coordinator.run(SWEEP, RunTrigger.BEAT)

    assert sweep.status == RunStatus.SUCCEEDED
    assert rig.kicker.kicks == [(NAME, RunTrigger.EVENT, [str(dying)])]
    handler, trigger, scope = rig.kicker.kicks[0]
    event = await rig.coordinator.run(handler, trigger, scope)

    assert event.run_id is not None
    run = rig.ledger.get_run(event.run_id)
    assert run.trigger == "event" and run.scope == [str(dying)]
    assert (run.requested, run.succeeded) == (1, 1)
    assert rig.destroyed() == [sibling]
    assert kernel_status(rig, other) == KernelStatus.TERMINATING
    assert rig.repo.get_session(dying).status == SessionStatus.TERMINATED
    assert rig.repo.get_session(bystander).status == SessionStatus.TERMINATING


# SC-RL-005 ------------------------------------------------------------------


async def test_sc_rl_005_twenty_concurrent_starts_yield_one_run(rig: Rig) -> None:
    """SC-RL-005: 20 concurrent starts of one handler against real Valkey: exactly one
    run, 19 skipped without a run row or an agent call; another handler still runs."""
    _, kids = add_session(rig, ["a1", "a1", "a2"])
    rig.fanout.hold = True  # the one run stays in flight while the others try

    triggers = [RunTrigger.BEAT, RunTrigger.MANUAL] * 10
    reports = await asyncio.gather(*(rig.coordinator.run(NAME, t) for t in triggers))

    ran = [r for r in reports if r.status != RunStatus.SKIPPED]
    skipped = [r for r in reports if r.status == RunStatus.SKIPPED]
    assert len(ran) == 1 and len(skipped) == 19
    assert all(r.run_id is None and r.note == "another run holds the claim" for r in skipped)
    runs = rig.ledger.list_runs(NAME)
    assert [r.id for r in runs] == [ran[0].run_id] and runs[0].status == RunStatus.RUNNING
    assert sorted(map(str, rig.destroyed())) == sorted(map(str, kids))  # once each

    other = await rig.coordinator.run(SWEEP, RunTrigger.BEAT)
    assert other.status == RunStatus.SUCCEEDED
    assert rig.ledger.get_run(runs[0].id).status == RunStatus.RUNNING

    await rig.fanout.release()
    assert rig.ledger.get_run(runs[0].id).status == RunStatus.SUCCEEDED


# SC-RL-006 ------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["succeeded", "partial", "failed"])
async def test_sc_rl_006_claim_released_after_any_finish(rig: Rig, outcome: str) -> None:
    """SC-RL-006: after a run finishes (any status) the next start of the handler runs."""
    _, (_, k2) = add_session(rig, ["a1", "a2"])
    if outcome == "partial":
        rig.agents["a2"].script("destroy_kernel", RuntimeError("boom"), key=k2)
    if outcome == "failed":
        rig.fanout.refuse = DispatchError("broker down")

    first = await rig.coordinator.run(NAME, RunTrigger.BEAT)

    assert str(first.status) == outcome
    assert await rig.redis.get(claim_key(LOCK_ID)) is None
    rig.fanout.refuse = None
    second = await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert second.status != RunStatus.SKIPPED and second.run_id != first.run_id


async def test_sc_rl_006_dead_claimants_claim_expires(engine: sa.Engine, redis: Redis) -> None:
    """SC-RL-006: a claimant that dies never releases; its claim lapses after its lifetime
    and the next start runs."""
    rig = build_rig(engine, redis, claim_lifetime=0.5)
    add_session(rig, ["a1"])
    rig.fanout.hold = True
    first = await rig.coordinator.run(NAME, RunTrigger.BEAT)
    rig.fanout.held.clear()  # the worker holding the run died: nothing completes it
    assert first.status == RunStatus.RUNNING
    ttl = await redis.pttl(claim_key(LOCK_ID))
    assert 0 < ttl <= 500

    blocked = await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert blocked.status == RunStatus.SKIPPED

    async with asyncio.timeout(30):
        # A lapsing key has no event to wait on: poll the server.
        while await redis.exists(claim_key(LOCK_ID)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    rig.fanout.hold = False
    later = await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert later.status == RunStatus.SUCCEEDED and later.run_id != first.run_id


# SC-RL-007 ------------------------------------------------------------------


def age_sessions(rig: Rig, ordered: Sequence[SessionId]) -> None:
    """Gives sessions distinct status-change times, first = oldest."""
    base = utcnow() - timedelta(hours=1)
    with rig.engine.begin() as conn:
        for i, sid in enumerate(ordered):
            conn.execute(
                sessions_table.update()
                .where(sessions_table.c.id == sid)
                .values(status_changed_at=base + timedelta(seconds=i))
            )


async def test_sc_rl_007_budget_oldest_first_rest_next_run(engine: sa.Engine, redis: Redis) -> None:
    """SC-RL-007: a budget of 2 sessions per run: oldest first, the rest in later runs,
    every kernel destroyed exactly once, nothing lost."""
    rig = build_rig(engine, redis, budgets={NAME: 2})
    made = [add_session(rig, ["a1", "a2"]) for _ in range(5)]
    order = [made[i][0] for i in (3, 0, 4, 1, 2)]
    age_sessions(rig, order)
    kernels_of = {sid: kids for sid, kids in made}

    per_run: list[set[str]] = []
    for _ in range(4):
        report = await rig.coordinator.run(NAME, RunTrigger.BEAT)
        assert report.run_id is not None
        per_run.append({i.item_id for i in rig.ledger.items(report.run_id)})

    expected = [order[0:2], order[2:4], order[4:5], []]
    assert per_run == [{str(k) for s in chunk for k in kernels_of[s]} for chunk in expected]
    destroyed = list(map(str, rig.destroyed()))
    assert len(destroyed) == len(set(destroyed)) == 10
    assert all(rig.repo.get_session(s).status == SessionStatus.TERMINATED for s, _ in made)


async def test_sc_rl_007_budget_argument_overrides_settings(rig: Rig) -> None:
    """SC-RL-007: the per-start budget (CLI --budget) bounds one run."""
    made = [add_session(rig, ["a1"]) for _ in range(3)]
    age_sessions(rig, [s for s, _ in made])

    report = await rig.coordinator.run(NAME, RunTrigger.MANUAL, budget=1)

    assert report.run_id is not None
    assert [i.item_id for i in rig.ledger.items(report.run_id)] == [str(made[0][1][0])]


# SC-RL-008 ------------------------------------------------------------------


async def start_then_crash(
    rig: Rig, *, a1_recorded: bool = True
) -> tuple[RunId, list[ItemOutcome]]:
    """Runs terminate until its fan-out is in flight, then loses the worker: only agent a1's
    batch recorded its outcomes (and moved its kernels, as a batch does); the chord body
    never comes."""
    rig.fanout.hold = True
    report = await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert report.run_id is not None and report.status == RunStatus.RUNNING
    ((_, _, outcomes),) = rig.fanout.held
    rig.fanout.held.clear()
    if a1_recorded:
        await rig.fanout.record(report.run_id, [o for o in outcomes if o.agent_id == "a1"])
    rig.ledger.update_run(report.run_id, deadline_at=utcnow() - timedelta(seconds=1))
    rig.fanout.hold = False
    return report.run_id, outcomes


async def test_sc_rl_008_recovery_abandons_and_next_run_picks_up_the_rest(rig: Rig) -> None:
    """SC-RL-008: a run past its deadline is abandoned with what it recorded; the recorded
    destroys are applied, and the next run destroys only the unfinished kernels."""
    done_sid, done = add_session(rig, ["a1", "a1"])
    open_sid, unfinished = add_session(rig, ["a2", "a2"])
    run_id, _ = await start_then_crash(rig)
    calls_before = len(rig.destroyed())

    assert await rig.coordinator.recover() == [run_id]

    run = rig.ledger.get_run(run_id)
    assert run.status == RunStatus.ABANDONED and run.finished_at is not None
    assert (run.requested, run.succeeded, run.failed, run.skipped) == (4, 2, 0, 0)
    assert {i.item_id for i in rig.ledger.items(run_id)} == {str(k) for k in done}
    assert all(kernel_status(rig, k) == KernelStatus.TERMINATED for k in done)
    assert rig.repo.get_session(done_sid).status == SessionStatus.TERMINATED
    assert await rig.coordinator.recover() == []  # nothing more overdue

    nxt = await rig.coordinator.run(NAME, RunTrigger.BEAT)

    assert nxt.status == RunStatus.SUCCEEDED and nxt.run_id is not None
    assert {i.item_id for i in rig.ledger.items(nxt.run_id)} == {str(k) for k in unfinished}
    assert sorted(map(str, rig.destroyed()[calls_before:])) == sorted(map(str, unfinished))
    assert rig.repo.get_session(open_sid).status == SessionStatus.TERMINATED


async def test_sc_rl_008_late_and_redelivered_outcomes_count_once(rig: Rig) -> None:
    """SC-RL-008 (SC-RC-003): a redelivered batch reports again, and the chord body of an
    abandoned run arrives late: the abandoned run keeps the late outcome as evidence only and
    moves nothing; the next run destroys that kernel and counts it, so each counts once."""
    add_session(rig, ["a1", "a1"])
    _, unfinished = add_session(rig, ["a2"])
    run_id, outcomes = await start_then_crash(rig)
    await rig.coordinator.recover()

    redelivered = outcomes + [o for o in outcomes if o.agent_id == "a2"]
    # The lost batches' tasks finish late (a redelivery among them), then the chord body.
    late = await rig.fanout.record(run_id, redelivered)
    await rig.coordinator.complete(run_id, Operation.DESTROY_KERNELS, late)

    run = rig.ledger.get_run(run_id)
    assert run.status == RunStatus.ABANDONED
    assert (run.succeeded, run.failed, run.skipped) == (2, 0, 0)
    items = rig.ledger.items(run_id)
    assert [(i.item_id, i.counted) for i in items if not i.counted] == [(str(unfinished[0]), False)]
    assert kernel_status(rig, unfinished[0]) == KernelStatus.TERMINATING
    nxt = await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert nxt.run_id is not None and rig.ledger.get_run(nxt.run_id).succeeded == 1
    assert kernel_status(rig, unfinished[0]) == KernelStatus.TERMINATED


async def test_sc_rl_008_duplicate_outcomes_in_one_completion_count_once(rig: Rig) -> None:
    """SC-RL-008: acks-late redelivery runs a batch twice (it records twice) and hands the
    chord body its outcomes twice: counted once."""
    add_session(rig, ["a1", "a2"])
    rig.fanout.hold = True
    report = await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert report.run_id is not None
    ((run_id, op, outcomes),) = rig.fanout.held
    rig.fanout.held.clear()

    first = await rig.fanout.record(run_id, outcomes)
    again = await rig.fanout.record(run_id, outcomes)
    record = await rig.coordinator.complete(run_id, op, first + again)

    assert record is not None and (record.succeeded, record.failed) == (2, 0)
    assert len(rig.ledger.items(run_id)) == 2


# SC-RL-009 ------------------------------------------------------------------


async def test_sc_rl_009_paused_handler_records_nothing_and_calls_no_agent(rig: Rig) -> None:
    """SC-RL-009: a paused handler ignores beat and manual starts; resuming lets it run;
    the paused state is read from SQL, so it survives a restart."""
    _, kids = add_session(rig, ["a1", "a2"])
    rig.ledger.set_paused(NAME, True, "agent maintenance")
    other_engine = create_engine(rig.engine.url.render_as_string(hide_password=False))
    restarted = RunLedger(other_engine)
    assert restarted.is_paused(NAME)
    assert restarted.handler_states()[NAME] == (True, "agent maintenance")
    other_engine.dispose()

    for trigger in (RunTrigger.BEAT, RunTrigger.MANUAL):
        report = await rig.coordinator.run(NAME, trigger)
        assert report.status == RunStatus.SKIPPED and report.note == "paused"
    assert rig.ledger.list_runs(NAME) == [] and rig.agent_calls() == 0
    assert await rig.redis.get(claim_key(LOCK_ID)) is None

    other = await rig.coordinator.run(SWEEP, RunTrigger.BEAT)  # other handlers unaffected
    assert other.status == RunStatus.SUCCEEDED

    rig.ledger.set_paused(NAME, False)
    resumed = await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert resumed.status == RunStatus.SUCCEEDED
    assert all(kernel_status(rig, k) == KernelStatus.TERMINATED for k in kids)


async def test_sc_rl_009_recovery_does_not_resume_a_paused_handler(rig: Rig) -> None:
    """SC-RL-009: recovery of a paused handler's overdue run marks it abandoned but applies
    nothing and starts nothing; after resume the next tick does the work."""
    _, done = add_session(rig, ["a1"])
    _, rest = add_session(rig, ["a2"])
    run_id, _ = await start_then_crash(rig, a1_recorded=False)
    rig.ledger.set_paused(NAME, True)
    calls_before = rig.agent_calls()

    assert await rig.coordinator.recover() == [run_id]

    assert rig.ledger.get_run(run_id).status == RunStatus.ABANDONED
    assert all(kernel_status(rig, k) == KernelStatus.TERMINATING for k in done + rest)
    assert rig.kicker.kicks == [] and rig.agent_calls() == calls_before
    assert (await rig.coordinator.run(NAME, RunTrigger.BEAT)).status == RunStatus.SKIPPED

    rig.ledger.set_paused(NAME, False)
    report = await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert report.status == RunStatus.SUCCEEDED
    assert all(kernel_status(rig, k) == KernelStatus.TERMINATED for k in done + rest)
