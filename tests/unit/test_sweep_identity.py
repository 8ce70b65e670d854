"""Stage 2 kills only on a False from the agent that hosts the kernel (SC-FA-003)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sokovan.errors import AgentRemoteError
from sokovan.scheduler.handlers.sweep_stale_kernels import SweepStaleKernelsKernelHandler
from sokovan.scheduler.terminator import SessionTerminator
from sokovan.testing import FakeAgentClientPool, FakeIdentityBook, FakePresence, InProcessFanOut
from sokovan.types import (
    AgentId,
    AgentIdentity,
    HealthCheckStatus,
    ItemOutcome,
    KernelId,
    KernelInfo,
    KernelPresence,
    SessionId,
)

A1 = AgentId("a1")
STALE = KernelPresence(HealthCheckStatus.STALE, last_presence=500.0)
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def kernel(running_since: datetime | None = T0) -> KernelInfo:
    return KernelInfo(
        KernelId(uuid.uuid4()), SessionId(uuid.uuid4()), A1, running_since=running_since
    )


async def _no_fanout(*_: object) -> list[ItemOutcome]:
    raise AssertionError("the sweep never fans out")


def build(
    pool: FakeAgentClientPool, kernels: list[KernelInfo], book: FakeIdentityBook
) -> SessionTerminator:
    presence = FakePresence({k.id: STALE for k in kernels})
    return SessionTerminator(pool, presence, InProcessFanOut(_no_fanout), identities=book)


async def test_verified_agent_false_kills() -> None:
    """The recorded instance answers False for a kernel that ran under it: dead."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("health", {"agent_id": "a1", "instance_id": "boot-1"})
    a1.script("check_running", False)
    k = kernel()
    book = FakeIdentityBook({A1: AgentIdentity(A1, "boot-1", T0 - timedelta(hours=1))})

    judgement = await build(pool, [k], book).judge_stale_kernels([k])

    assert judgement.dead_kernel_ids == [k.id]
    assert [c.method for c in a1.calls] == ["health", "check_running"]
    assert book.lookups == [[A1]]


async def test_sc_fa_003_other_instance_is_unverified_and_not_asked() -> None:
    """SC-FA-003: an agent answering as another instance than recorded kills nothing.

    Given a kernel on a1 recorded as instance boot-1,
    When the agent at a1's address reports instance boot-2,
    Then check_running is not asked, the kernel is skipped as "unverified: identity",
    and the evidence names both instances.
    """
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("health", {"agent_id": "a1", "instance_id": "boot-2"})
    a1.script("check_running", False)
    k = kernel()
    book = FakeIdentityBook({A1: AgentIdentity(A1, "boot-1", None)})
    handler = SweepStaleKernelsKernelHandler(build(pool, [k], book))

    result = await handler.execute("default", [k])

    assert result.failures == []
    assert [(s.kernel_id, s.reason) for s in result.skipped] == [(k.id, "unverified: identity")]
    assert a1.calls_to("check_running") == []
    evidence = result.evidence[str(k.id)]
    assert evidence["check_running"] == "identity"
    assert "boot-2" in evidence["identity"] and "boot-1" in evidence["identity"]


async def test_sc_fa_003_other_agent_id_is_unverified() -> None:
    """SC-FA-003: the agent at the address says it is another agent: nothing killed."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("health", {"agent_id": "i-newcomer", "instance_id": "x"})
    a1.script("check_running", False)
    k = kernel()

    judgement = await build(pool, [k], FakeIdentityBook()).judge_stale_kernels([k])

    assert judgement.dead_kernel_ids == []
    assert judgement.candidates[0].answer == "identity"
    assert "i-newcomer" in (judgement.candidates[0].identity or "")


async def test_sc_fa_003_instance_newer_than_the_kernel_cannot_kill_it() -> None:
    """SC-FA-003: a restarted agent (new instance, recorded) never hosted older kernels.

    A False for a kernel that ran before the instance started is unverified; a False for a
    kernel it started itself still kills.
    """
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("health", {"agent_id": "a1", "instance_id": "boot-2"})
    a1.script("check_running", False)
    old, new = kernel(T0 - timedelta(minutes=5)), kernel(T0 + timedelta(minutes=5))
    book = FakeIdentityBook({A1: AgentIdentity(A1, "boot-2", T0)})

    judgement = await build(pool, [old, new], book).judge_stale_kernels([old, new])

    assert judgement.dead_kernel_ids == [new.id]
    assert judgement.candidates[0].answer == "identity"
    assert "never hosted" in (judgement.candidates[0].identity or "")


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

    judgement = await build(pool, [k], FakeIdentityBook()).judge_stale_kernels([k])

    assert judgement.dead_kernel_ids == []
    assert judgement.candidates[0].answer == "identity"


async def test_health_failure_is_unverified_not_dead() -> None:
    """An agent that cannot say who it is kills nothing."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("health", AgentRemoteError("RuntimeError", "boom", "health"))
    a1.script("check_running", False)
    k = kernel()

    judgement = await build(pool, [k], FakeIdentityBook()).judge_stale_kernels([k])

    assert judgement.dead_kernel_ids == []
    assert judgement.candidates[0].answer == "identity"
    assert a1.calls_to("check_running") == []


async def test_real_agent_report_without_marker_is_verified_by_agent_id() -> None:
    """A real agent's health names no id: the agent id every call carries is the identity."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("health", {"status": "ok", "version": "26.9.6", "component": "agent"})
    a1.script("check_running", False)
    k = kernel()

    judgement = await build(pool, [k], FakeIdentityBook()).judge_stale_kernels([k])

    assert judgement.dead_kernel_ids == [k.id]
