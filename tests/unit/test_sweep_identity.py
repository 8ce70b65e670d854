"""Stage 2 kills only on a False from the agent id that hosts the kernel (SC-FA-003, SC-CV-004).

An agent id is its node: a restarted agent (a new instance marker, same id) speaks for the
kernels of its node; a different agent id at the address is a stranger.
"""

from __future__ import annotations

import uuid

from sokovan.errors import AgentRemoteError
from sokovan.scheduler.handlers.sweep_stale_kernels import SweepStaleKernelsKernelHandler
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
    SessionId,
)
from tests.sweep_stages import judge_stale_kernels

A1 = AgentId("a1")
STALE = KernelPresence(HealthCheckStatus.STALE, last_presence=500.0)


def kernel() -> KernelInfo:
    return KernelInfo(KernelId(uuid.uuid4()), SessionId(uuid.uuid4()), A1)


async def _no_fanout(*_: object) -> list[ItemOutcome]:
    raise AssertionError("the sweep never fans out")


def build(pool: FakeAgentClientPool, kernels: list[KernelInfo]) -> SessionTerminator:
    presence = FakePresence({k.id: STALE for k in kernels})
    return SessionTerminator(pool, presence, InProcessFanOut(_no_fanout), verify_identity=True)


async def test_verified_agent_false_kills() -> None:
    """The agent at the address says it is a1 and answers False: dead."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("health", {"agent_id": "a1", "instance_id": "boot-1"})
    a1.script("check_running", False)
    k = kernel()

    judgement = await judge_stale_kernels(build(pool, [k]), [k])

    assert judgement.dead_kernel_ids == [k.id]
    assert [c.method for c in a1.calls] == ["health", "check_running"]


async def test_sc_cv_004_restarted_agent_speaks_for_its_node() -> None:
    """SC-CV-004: a restarted agent (new instance, same id) answers for its node's kernels.

    Given kernels on a1 that ran before a1 restarted (its instance marker is new),
    When the restarted a1 answers False for one and True for the other,
    Then the first is dead and the second alive: no instance veto, no "identity" skip.
    """
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("health", {"agent_id": "a1", "instance_id": "boot-2"})
    gone, kept = kernel(), kernel()
    a1.script("check_running", lambda kernel_id: kernel_id == kept.id)
    handler = SweepStaleKernelsKernelHandler(build(pool, [gone, kept]))

    result = await handler.execute("default", [gone, kept])

    assert [f.kernel_id for f in result.failures] == [gone.id]
    assert [s.kernel_id for s in result.successes] == [kept.id]
    assert result.skipped == []
    assert "identity" not in result.evidence[str(gone.id)]
    assert result.evidence[str(kept.id)]["check_running"] == "True"


async def test_sc_fa_003_other_agent_id_is_unverified() -> None:
    """SC-FA-003: the agent at the address says it is another agent: nothing killed."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("health", {"agent_id": "i-newcomer", "instance_id": "x"})
    a1.script("check_running", False)
    k = kernel()

    judgement = await judge_stale_kernels(build(pool, [k]), [k])

    assert judgement.dead_kernel_ids == []
    assert judgement.candidates[0].answer == "identity"
    assert "i-newcomer" in (judgement.candidates[0].identity or "")
    assert a1.calls_to("check_running") == []


async def test_sc_fa_003_agent_id_refused_by_the_agent_is_unverified() -> None:
    """SC-FA-003: the agent refuses the call's agent id (AgentIdNotFoundError): unverified."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("health", {"status": "ok"})  # a real agent names neither id nor instance
    a1.script(
        "check_running",
        AgentRemoteError("AgentIdNotFoundError", "Agent 'a1' not found", "check_running"),
    )
    k = kernel()

    judgement = await judge_stale_kernels(build(pool, [k]), [k])

    assert judgement.dead_kernel_ids == []
    assert judgement.candidates[0].answer == "identity"


async def test_health_failure_is_unverified_not_dead() -> None:
    """An agent that cannot say who it is kills nothing: unreachable, not a stranger (SC-CV-005).

    Its answer is the error (`unverified: error: ...`), as for any agent that cannot be asked;
    "identity" is kept for another agent id answering.
    """
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("health", AgentRemoteError("RuntimeError", "boom", "health"))
    a1.script("check_running", False)
    k = kernel()

    judgement = await judge_stale_kernels(build(pool, [k]), [k])

    assert judgement.dead_kernel_ids == []
    assert (judgement.candidates[0].answer or "").startswith("error: ")
    assert "boom" in (judgement.candidates[0].answer or "")
    assert a1.calls_to("check_running") == []


async def test_real_agent_report_without_marker_is_verified_by_agent_id() -> None:
    """A real agent's health names no id: the agent id every call carries is the identity."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("health", {"status": "ok", "version": "26.9.6", "component": "agent"})
    a1.script("check_running", False)
    k = kernel()

    judgement = await judge_stale_kernels(build(pool, [k]), [k])

    assert judgement.dead_kernel_ids == [k.id]
