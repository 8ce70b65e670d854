"""SweepStaleKernelsKernelHandler over a real SessionTerminator and fake ports."""

from __future__ import annotations

import logging
import uuid

import pytest

from sokovan.scheduler.handlers.base import KernelHandler
from sokovan.scheduler.handlers.sweep_stale_kernels import (
    DECLARATION,
    SweepStaleKernelsKernelHandler,
)
from sokovan.scheduler.terminator import SessionTerminator
from sokovan.stubs.agents import FakeAgentClientPool
from sokovan.stubs.fanout import InProcessFanOut
from sokovan.stubs.presence import FakePresence
from sokovan.types import (
    AgentId,
    HealthCheckStatus,
    ItemOutcome,
    KernelId,
    KernelInfo,
    KernelPresence,
    KernelStatus,
    SessionId,
    Verdict,
)

A1, A2 = AgentId("a1"), AgentId("a2")
ALIVE = KernelPresence(HealthCheckStatus.ALIVE, last_presence=1000.0)
STALE = KernelPresence(HealthCheckStatus.STALE, last_presence=500.0)


def new_kernel(agent: AgentId | None = A1) -> KernelInfo:
    return KernelInfo(
        id=KernelId(uuid.uuid4()),
        session_id=SessionId(uuid.uuid4()),
        agent_id=agent,
        status=KernelStatus.RUNNING,
    )


async def _no_fanout(*_: object) -> list[ItemOutcome]:
    raise AssertionError("the sweep never fans out")


def build(
    presence: FakePresence,
    pool: FakeAgentClientPool,
    max_stale_ratio: float = 0.5,
    brake_min_kernels: int = 10,
    page_size: int = 10_000,
    brake_reap_share: float = 0.0,
) -> SweepStaleKernelsKernelHandler:
    """The handler; its brake reaps nothing unless `brake_reap_share` says so (SC-CV-010)."""
    terminator = SessionTerminator(
        pool, presence, InProcessFanOut(_no_fanout), presence_page_size=page_size
    )
    return SweepStaleKernelsKernelHandler(
        terminator, max_stale_ratio, brake_min_kernels, brake_reap_share
    )


def test_handler_declares_name_lock_and_transitions() -> None:
    """The handler's public identity: name, Backend.AI's lock, its targets, and what a dead
    verdict means (alive ones keep their status: no transition)."""
    assert issubclass(SweepStaleKernelsKernelHandler, KernelHandler)
    assert DECLARATION.name == "sweep_stale_kernels"
    assert DECLARATION.lock_id == "LOCKID_SOKOVAN_TARGET_TERMINATING"
    assert DECLARATION.targets.kernels == (KernelStatus.RUNNING,)
    assert set(DECLARATION.transitions) == {Verdict.DEAD}
    assert DECLARATION.transitions[Verdict.DEAD].kernel is KernelStatus.TERMINATED


async def test_sc_sk_001_all_kernels_alive_no_state_change() -> None:
    """SC-SK-001: nothing dead: both kernels are successes with reason None, one read."""
    pool = FakeAgentClientPool()
    pool.add(A1)
    k1, k2 = new_kernel(), new_kernel()
    presence = FakePresence({k1.id: ALIVE, k2.id: ALIVE})

    result = await build(presence, pool).execute("default", [k1, k2])

    assert [s.kernel_id for s in result.successes] == [k1.id, k2.id]
    assert result.successes[0].from_status is KernelStatus.RUNNING
    assert result.successes[0].reason is None
    assert (result.failures, result.skipped, result.brake) == ([], [], None)
    assert presence.batches == [[k1.id, k2.id]]


async def test_sc_sk_002_dead_kernel_marked_as_failure() -> None:
    """SC-SK-002: k2 is confirmed dead: failure STALE_KERNEL; k1 and k3 successes."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    k1, k2, k3 = new_kernel(), new_kernel(), new_kernel()
    a1.script("check_running", False, key=k2.id)
    presence = FakePresence({k1.id: ALIVE, k2.id: STALE, k3.id: ALIVE})

    result = await build(presence, pool).execute("default", [k1, k2, k3])

    assert [s.kernel_id for s in result.successes] == [k1.id, k3.id]
    [failure] = result.failures
    assert (failure.kernel_id, failure.from_status, failure.reason) == (
        k2.id,
        KernelStatus.RUNNING,
        "STALE_KERNEL",
    )
    assert result.evidence[str(k2.id)]["check_running"] == "False"


async def test_sc_sk_003_empty_kernel_list_returns_empty_result() -> None:
    """SC-SK-003: no kernels: empty result, no presence read, no agent acquired."""
    pool = FakeAgentClientPool()
    presence = FakePresence()

    result = await build(presence, pool).execute("default", [])

    assert (result.successes, result.failures, result.skipped) == ([], [], [])
    assert presence.batches == []
    assert pool.acquired == []


async def test_unsure_kernels_are_skipped_not_killed() -> None:
    """Kernels whose agent errs or cannot tell keep their status and say why."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    k1, k2 = new_kernel(), new_kernel()
    a1.script("check_running", None, key=k1.id)
    a1.script("check_running", RuntimeError("socket closed"), key=k2.id)

    result = await build(FakePresence({}), pool).execute("default", [k1, k2])

    assert result.failures == [] and result.successes == []
    assert [(s.kernel_id, s.reason) for s in result.skipped] == [
        (k1.id, "unverified: None"),
        (k2.id, "unverified: error: socket closed"),
    ]


async def test_brake_presence_unavailable_kills_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The presence store cannot be read: no failures, the brake recorded, no agent asked."""
    pool = FakeAgentClientPool()
    pool.add(A1).script("check_running", False)
    presence = FakePresence()
    presence.unavailable = True
    kernels = [new_kernel() for _ in range(3)]

    with caplog.at_level(logging.WARNING):
        result = await build(presence, pool).execute("default", kernels)

    assert result.failures == [] and result.successes == []
    assert [s.kernel_id for s in result.skipped] == [k.id for k in kernels]
    assert result.brake is not None and "presence unavailable" in result.brake
    assert pool.acquired == []
    assert "kills nothing" in caplog.text


async def test_brake_stale_ratio_kills_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """Most of enough kernels look stale at once: no failures, no stage-2 call, brake recorded.

    Given 10 kernels, 6 without presence, every agent answering False,
    When the handler runs with max_stale_ratio 0.5 and brake_min_kernels 10,
    Then nothing is killed and check_running is never called.
    """
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("check_running", False)
    kernels = [new_kernel() for _ in range(10)]
    presence = FakePresence({k.id: ALIVE for k in kernels[6:]})

    with caplog.at_level(logging.WARNING):
        result = await build(presence, pool).execute("default", kernels)

    assert result.failures == []
    assert result.brake is not None and "6 of 10" in result.brake
    assert a1.calls_to("check_running") == [] and pool.acquired == []
    assert len(result.skipped) == 10
    assert set(result.evidence) == {str(k.id) for k in kernels[:6]}
    assert all(str(k.id) in caplog.text for k in kernels[:6])


async def test_brake_ratio_needs_enough_kernels() -> None:
    """Below brake_min_kernels the ratio is ignored: 3 of 4 stale are still judged."""
    pool = FakeAgentClientPool()
    pool.add(A1).script("check_running", False)
    kernels = [new_kernel() for _ in range(4)]
    presence = FakePresence({kernels[0].id: ALIVE})

    result = await build(presence, pool).execute("default", kernels)

    assert result.brake is None
    assert [f.kernel_id for f in result.failures] == [k.id for k in kernels[1:]]


async def test_brake_ratio_at_the_limit_still_judges() -> None:
    """Exactly max_stale_ratio stale is not above it: the sweep goes on."""
    pool = FakeAgentClientPool()
    pool.add(A1).script("check_running", False)
    kernels = [new_kernel() for _ in range(10)]
    presence = FakePresence({k.id: ALIVE for k in kernels[5:]})

    result = await build(presence, pool).execute("default", kernels)

    assert result.brake is None
    assert len(result.failures) == 5 and len(result.successes) == 5


async def test_sc_te_int_001_full_stale_sweep_flow() -> None:
    """SC-TE-INT-001: 5 RUNNING kernels, 2 ALIVE, 3 STALE of which 1 dead: one failure.

    Given presence ALIVE for k1, k2 and STALE for k3, k4, k5 on two agents,
    And the agents answer k3 False, k4 True, k5 True,
    When the handler executes,
    Then only k3 is a failure (to be TERMINATED) and the rest keep RUNNING.
    """
    pool = FakeAgentClientPool()
    a1, a2 = pool.add(A1), pool.add(A2)
    k1, k2, k3, k4, k5 = (new_kernel(A1 if i % 2 else A2) for i in range(5))
    for kernel, running in ((k3, False), (k4, True), (k5, True)):
        (a1 if kernel.agent_id == A1 else a2).script("check_running", running, key=kernel.id)
    presence = FakePresence({k1.id: ALIVE, k2.id: ALIVE, k3.id: STALE, k4.id: STALE, k5.id: STALE})

    result = await build(presence, pool).execute("default", [k1, k2, k3, k4, k5])

    assert [f.kernel_id for f in result.failures] == [k3.id]
    assert [s.kernel_id for s in result.successes] == [k1.id, k2.id, k4.id, k5.id]
    assert result.skipped == [] and result.brake is None
    checked = {c.args[0] for c in a1.calls_to("check_running") + a2.calls_to("check_running")}
    assert checked == {k3.id, k4.id, k5.id}
    assert len(presence.batches) == 1


async def test_sc_kh_int_001_full_stale_kernel_sweep_flow() -> None:
    """SC-KH-INT-001: k1 STALE+False, k2 ALIVE, k3 STALE+True: failures [k1].

    The coordinator applies status_transitions.failure (TERMINATED) to the failures
    and leaves successes as they are.
    """
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    k1, k2, k3 = new_kernel(), new_kernel(), new_kernel()
    a1.script("check_running", False, key=k1.id)
    a1.script("check_running", True, key=k3.id)
    presence = FakePresence({k1.id: STALE, k2.id: ALIVE, k3.id: STALE})
    handler = build(presence, pool)

    result = await handler.execute("default", [k1, k2, k3])

    assert [f.kernel_id for f in result.failures] == [k1.id]
    assert [s.kernel_id for s in result.successes] == [k2.id, k3.id]
    assert [c.args[0] for c in a1.calls_to("check_running")] == [k1.id, k3.id]


async def test_brake_is_judged_over_all_pages_not_per_page() -> None:
    """Stale kernels bunched in the first pages do not brake a run whose whole ratio is low.

    Given 10 kernels read in pages of 2, the first 4 without presence (pages 1 and 2 all
    stale), every agent answering False,
    When the handler runs with max_stale_ratio 0.5 and brake_min_kernels 2,
    Then 4 of 10 is under the ratio: no brake, the 4 are failures, 5 presence reads.
    """
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("check_running", False)
    kernels = [new_kernel() for _ in range(10)]
    presence = FakePresence({k.id: ALIVE for k in kernels[4:]})

    result = await build(presence, pool, brake_min_kernels=2, page_size=2).execute(
        "default", kernels
    )

    assert result.brake is None
    assert [f.kernel_id for f in result.failures] == [k.id for k in kernels[:4]]
    assert len(result.successes) == 6
    assert len(presence.batches) == 5


async def test_brake_over_pages_holds_when_the_whole_run_is_stale() -> None:
    """Stale kernels spread thin over pages still brake when the run as a whole is mostly stale.

    Given 10 kernels in pages of 4 where 6 lack presence, When the handler runs with
    max_stale_ratio 0.5, Then the brake holds over all 10 (6 of 10) and no agent is asked.
    """
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("check_running", False)
    kernels = [new_kernel() for _ in range(10)]
    presence = FakePresence({kernels[i].id: ALIVE for i in (0, 3, 6, 9)})

    result = await build(presence, pool, page_size=4).execute("default", kernels)

    assert result.brake is not None and "6 of 10" in result.brake
    assert result.failures == [] and len(result.skipped) == 10
    assert pool.acquired == [] and a1.calls_to("check_running") == []
    assert len(presence.batches) == 3


async def test_sc_cv_010_braked_run_reaps_confirmed_dead_at_its_share() -> None:
    """SC-CV-010: above the ratio, the agents are asked; confirmed dead are reaped, a share.

    Given 10 kernels, 8 without presence, a1 answering True for one of them and False for
    the rest, a brake reaping at most 0.3 of the group per run,
    Then 3 are failures (the first confirmed dead), 4 are skipped as deferred, the one a1
    reports running and the two fresh ones are successes, and `brake` says what was left.
    """
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    kernels = [new_kernel() for _ in range(10)]
    running = kernels[1]
    a1.script("check_running", lambda kid: kid == running.id)
    presence = FakePresence({k.id: ALIVE for k in kernels[8:]})

    result = await build(presence, pool, brake_reap_share=0.3).execute("default", kernels)

    dead = [k.id for k in kernels[:8] if k is not running]
    assert [f.kernel_id for f in result.failures] == dead[:3]
    assert [(s.kernel_id, s.reason) for s in result.skipped] == [
        (k, "deferred: reap rate of the brake") for k in dead[3:]
    ]
    assert {s.kernel_id for s in result.successes} == {running.id, kernels[8].id, kernels[9].id}
    assert result.brake is not None and "reaping at most 3 per run" in result.brake
    assert "4 left for the next runs" in result.brake


async def test_sc_cv_010_braked_run_holds_when_no_agent_confirms_a_death() -> None:
    """SC-CV-010: a presence outage (agents report every suspect running) still holds."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("check_running", True)
    kernels = [new_kernel() for _ in range(10)]
    presence = FakePresence({k.id: ALIVE for k in kernels[6:]})

    result = await build(presence, pool, brake_reap_share=0.3).execute("default", kernels)

    assert result.failures == [] and len(result.skipped) == 10
    assert result.brake is not None and "presence outage suspected" in result.brake
    assert "report 6 of them running" in result.brake
    assert len(a1.calls_to("check_running")) == 6
