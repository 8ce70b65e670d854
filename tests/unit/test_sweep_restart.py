"""Kernels of an agent that restarted after their last presence are suspects at once
(SC-CV-004, SC-CV-010), over a real SessionTerminator and the stubs of sokovan.stubs.

A restarted agent's kernels keep their presence hashes (a persistent Valkey), so presence
alone would call them fresh until it goes STALE (120 s). A kernel last present before its
agent's restart has not been vouched for by the new instance: its agent is asked, and only
its explicit False kills.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from sokovan import constants as C
from sokovan.scheduler.handlers import sweep_stale_kernels
from sokovan.scheduler.handlers.sweep_stale_kernels import SweepStaleKernelsKernelHandler
from sokovan.scheduler.liveness import ping_agent
from sokovan.scheduler.terminator import SessionTerminator
from sokovan.scheduler.terminator.identity import reported_start
from sokovan.stubs.agents import FakeAgentClient, FakeAgentClientPool
from sokovan.stubs.context import stub_context
from sokovan.stubs.fanout import InProcessFanOut
from sokovan.stubs.presence import FakePresence
from sokovan.stubs.store import InMemoryStore
from sokovan.types import (
    AgentId,
    HealthCheckStatus,
    ItemOutcome,
    KernelId,
    KernelInfo,
    KernelPresence,
    KernelStatus,
    RunId,
    SessionId,
    SessionInfo,
    SessionStatus,
    Verdict,
    utcnow,
)

A1, A2 = AgentId("a1"), AgentId("a2")
# a1's new instance started at 10,000 s; the old instance last wrote presence at 9,990 s.
STARTED = 10_000.0
BEFORE = KernelPresence(HealthCheckStatus.HEALTHY, last_presence=STARTED - 10)
# Written by the new instance (stamps are whole seconds: one a second before its start may
# be its own first write).
SINCE = KernelPresence(HealthCheckStatus.HEALTHY, last_presence=STARTED - 1)
STALE = KernelPresence(HealthCheckStatus.STALE, last_presence=500.0)
RESTARTS = {A1: STARTED}


def new_kernel(agent: AgentId | None = A1) -> KernelInfo:
    return KernelInfo(
        id=KernelId(uuid.uuid4()),
        session_id=SessionId(uuid.uuid4()),
        agent_id=agent,
        status=KernelStatus.RUNNING,
    )


async def _no_fanout(*_: object) -> list[ItemOutcome]:
    raise AssertionError("the sweep never fans out")


def terminator(presence: FakePresence, pool: FakeAgentClientPool) -> SessionTerminator:
    return SessionTerminator(pool, presence, InProcessFanOut(_no_fanout))


def handler(
    presence: FakePresence, pool: FakeAgentClientPool, reap_share: float = 0.0
) -> SweepStaleKernelsKernelHandler:
    return SweepStaleKernelsKernelHandler(terminator(presence, pool), 0.5, 10, reap_share)


def asked(client: FakeAgentClient) -> list[KernelId]:
    return [call.args[0] for call in client.calls_to("check_running")]


async def test_kernel_last_present_before_its_agents_restart_is_a_suspect() -> None:
    """SC-CV-004 stage 1: presence fresh but older than a1's restart: a suspect, and the
    evidence says the restart made it one; a stamp within the grace, a kernel of another
    agent, and a presence hash without last_presence are judged as the rule says."""
    old, recent, elsewhere, unstamped = new_kernel(), new_kernel(), new_kernel(A2), new_kernel()
    presence = FakePresence(
        {
            old.id: BEFORE,
            recent.id: SINCE,
            elsewhere.id: BEFORE,
            unstamped.id: KernelPresence(HealthCheckStatus.HEALTHY, None),
        }
    )
    pool = FakeAgentClientPool()

    judgement = await terminator(presence, pool).read_presence(
        [old, recent, elsewhere, unstamped], restarts=RESTARTS
    )

    assert [e.kernel_id for e in judgement.candidates] == [old.id, unstamped.id]
    evidence = judgement.evidence()[str(old.id)]
    assert evidence["presence"] == "HEALTHY"
    assert evidence["agent_restarted_at"] == STARTED
    assert evidence["suspected"] == (
        "agent restarted at 1970-01-01T02:46:40+00:00 after the kernel's last presence"
        " at 1970-01-01T02:46:30+00:00"
    )
    assert "stale" not in str(evidence["suspected"])
    assert pool.acquired == []


async def test_without_restarts_fresh_presence_is_no_suspect() -> None:
    """A real Backend.AI agent reports no instance, so no restart is known: nothing changes,
    a kernel with fresh presence is not a suspect and no agent is asked."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    k = new_kernel()

    result = await handler(FakePresence({k.id: BEFORE}), pool).execute("default", [k])

    assert [s.kernel_id for s in result.successes] == [k.id]
    assert (result.failures, result.skipped, result.evidence) == ([], [], {})
    assert asked(a1) == []


async def test_restarted_agents_false_reaps_its_true_keeps() -> None:
    """SC-CV-004: the restarted a1 answers False for one kernel and True for another (it
    kept it): the first is reaped (STALE_KERNEL) on evidence naming the restart, the second
    stays with its evidence; a None is skipped as unverified; a2, not restarted, is not asked."""
    pool = FakeAgentClientPool()
    a1, a2 = pool.add(A1), pool.add(A2)
    dead, kept, unsure, other = new_kernel(), new_kernel(), new_kernel(), new_kernel(A2)
    a1.script("check_running", False, key=dead.id)
    a1.script("check_running", True, key=kept.id)
    a1.script("check_running", None, key=unsure.id)
    presence = FakePresence({k.id: BEFORE for k in (dead, kept, unsure, other)})

    result = await handler(presence, pool).execute(
        "default", [dead, kept, unsure, other], restarts=RESTARTS
    )

    assert [(f.kernel_id, f.reason) for f in result.failures] == [(dead.id, "STALE_KERNEL")]
    assert [s.kernel_id for s in result.successes] == [kept.id, other.id]
    assert [s.kernel_id for s in result.skipped] == [unsure.id]
    assert result.evidence[str(dead.id)]["check_running"] == "False"
    assert "agent restarted at" in str(result.evidence[str(dead.id)]["suspected"])
    assert result.evidence[str(kept.id)]["check_running"] == "True"
    assert sorted(asked(a1)) == sorted([dead.id, kept.id, unsure.id])
    assert asked(a2) == []


async def test_unreachable_restarted_agent_kills_nothing() -> None:
    """A suspect by restart whose agent cannot be asked is skipped, never reaped."""
    pool = FakeAgentClientPool()
    k = new_kernel(AgentId("a-gone"))

    result = await handler(FakePresence({k.id: BEFORE}), pool).execute(
        "default", [k], restarts={AgentId("a-gone"): STARTED}
    )

    assert result.failures == []
    (skipped,) = result.skipped
    assert (skipped.reason or "").startswith("unverified: error")


async def test_sc_cv_010_whole_restart_reaps_at_the_brakes_rate() -> None:
    """SC-CV-010: every agent restarted; presence of their twelve kernels survived and looks
    fresh. All twelve are suspects by restart, above the brake's ratio; the agents confirm
    them dead, so the run reaps its share (a quarter: three) and defers the rest."""
    pool = FakeAgentClientPool()
    for agent in (A1, A2):
        pool.add(agent).script("check_running", False)
    kernels = [new_kernel(A1 if i % 2 else A2) for i in range(12)]
    presence = FakePresence({k.id: BEFORE for k in kernels})

    result = await handler(presence, pool, reap_share=0.25).execute(
        "default", kernels, restarts={A1: STARTED, A2: STARTED}
    )

    assert result.brake is not None and "12 of 12 kernels look stale" in result.brake
    assert len(result.failures) == 3
    assert len(result.skipped) == 9
    assert all("agent restarted at" in str(e["suspected"]) for e in result.evidence.values())


async def test_sc_cv_010_presence_unreadable_still_holds() -> None:
    """SC-CV-010: with presence unreadable, a known restart changes nothing: the run holds."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("check_running", False)
    kernels = [new_kernel() for _ in range(12)]
    presence = FakePresence({k.id: BEFORE for k in kernels})
    presence.unavailable = True

    result = await handler(presence, pool, reap_share=0.25).execute(
        "default", kernels, restarts=RESTARTS
    )

    assert result.failures == []
    assert result.brake is not None and "presence unavailable" in result.brake
    assert asked(a1) == []


async def test_ping_records_the_start_an_agent_reports() -> None:
    """check_agents' ping carries the instance's reported start; an agent that reports none
    (a real Backend.AI agent) gives None."""
    pool = FakeAgentClientPool()
    a1, a2 = pool.add(A1), pool.add(A2)
    a1.script("health", {"agent_id": "a1", "instance_id": "boot-2", "started_at": STARTED})
    a2.script("health", {"status": "ok"})

    ping1 = await ping_agent(pool, A1, 5.0)
    ping2 = await ping_agent(pool, A2, 5.0)

    assert (ping1.instance_id, ping1.started_at) == (
        "boot-2",
        datetime.fromtimestamp(STARTED, UTC),
    )
    assert (ping2.instance_id, ping2.started_at) == (None, None)


@pytest.mark.parametrize(
    "raw", [None, "10000", True, float("nan"), float("inf"), -5, 0, 1e300, [1], {"s": 1}]
)
def test_reported_start_refuses_what_is_no_time(raw: object) -> None:
    """Only a finite, positive number of epoch seconds is a start."""
    assert reported_start({"started_at": raw}) is None


def test_reported_start_reads_epoch_seconds() -> None:
    assert reported_start({"started_at": 1_700_000_000}) == datetime.fromtimestamp(
        1_700_000_000, UTC
    )
    assert C.AGENT_RESTART_GRACE_SEC < C.PRESENCE_STALE_AFTER_SEC


async def test_sc_cv_004_sweep_planning_on_the_store_stub_asks_only_about_the_restarted() -> None:
    """SC-CV-004 through the sweep's planning on the in-memory store: a1 restarted (its
    second marker, with the start it reports) a minute ago; the kernel a1 ran before is
    asked about and found dead, the one b1 runs is never asked."""
    store = InMemoryStore()
    now = utcnow()
    started = now - timedelta(seconds=60)
    await store.record_contact(A1, "boot-1", now - timedelta(hours=1))
    await store.record_contact(A1, "boot-2", now, started)
    await store.record_contact(A2, "boot-1", now)
    assert await store.agents_restarted_since(now - timedelta(seconds=130)) == {A1: started}
    on_a1, on_a2 = new_kernel(A1), new_kernel(A2)
    for k in (on_a1, on_a2):
        store.add_session(SessionInfo(k.session_id, (k,), status=SessionStatus.RUNNING))
    assert await store.sweep_ids_on_agents([KernelStatus.RUNNING], [A1]) == [str(on_a1.id)]
    before = KernelPresence(HealthCheckStatus.HEALTHY, started.timestamp() - 30)
    presence = FakePresence({on_a1.id: before, on_a2.id: before})
    pool = FakeAgentClientPool()
    a1, a2 = pool.add(A1), pool.add(A2)
    a1.script("check_running", False)
    runtime = sweep_stale_kernels.build(stub_context(store, pool=pool, presence=presence))

    plan = await runtime.plan(RunId(1), None, 0)

    assert [(o.item_id, o.verdict) for o in plan.outcomes] == [(str(on_a1.id), Verdict.DEAD)]
    assert str(plan.outcomes[0].detail["suspected"]).startswith("agent restarted at")
    assert asked(a1) == [on_a1.id] and asked(a2) == []
