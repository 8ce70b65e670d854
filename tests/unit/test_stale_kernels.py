"""The sweep's stages on SessionTerminator: presence, then the agent."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from sokovan.errors import AgentError, PresenceUnavailable
from sokovan.scheduler.terminator import SessionTerminator
from sokovan.stubs.agents import FakeAgentClient, FakeAgentClientPool
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
from tests.sweep_stages import check_stale_kernels, judge_stale_kernels

A1, A2, A3 = AgentId("a1"), AgentId("a2"), AgentId("a3")
ALIVE = KernelPresence(HealthCheckStatus.ALIVE, last_presence=1000.0)
STALE = KernelPresence(HealthCheckStatus.STALE, last_presence=500.0)


def new_kernel(agent: AgentId | None) -> KernelInfo:
    return KernelInfo(id=KernelId(uuid.uuid4()), session_id=SessionId(uuid.uuid4()), agent_id=agent)


async def _no_fanout(*_: object) -> list[ItemOutcome]:
    raise AssertionError("the sweep never fans out")


def build(
    presence: FakePresence, pool: FakeAgentClientPool, concurrency: int = 8
) -> SessionTerminator:
    return SessionTerminator(
        pool, presence, InProcessFanOut(_no_fanout), check_running_concurrency=concurrency
    )


def asked(client: FakeAgentClient) -> list[KernelId]:
    return [call.args[0] for call in client.calls_to("check_running")]


@pytest.mark.parametrize("scenario", ["SC-TE-008", "SC-CSK-001"])
async def test_sc_te_008_sc_csk_001_all_alive_skips_stage_two(scenario: str) -> None:
    """SC-TE-008 / SC-CSK-001: every kernel ALIVE in presence: [] and no agent acquired."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    k1, k2 = new_kernel(A1), new_kernel(A1)
    presence = FakePresence({k1.id: ALIVE, k2.id: ALIVE})

    dead = await check_stale_kernels(build(presence, pool), [k1, k2])

    assert dead == []
    assert presence.batches == [[k1.id, k2.id]]
    assert pool.acquired == []
    assert asked(a1) == []


@pytest.mark.parametrize("scenario", ["SC-TE-009", "SC-CSK-002"])
async def test_sc_te_009_sc_csk_002_stale_and_agent_confirms_dead(scenario: str) -> None:
    """SC-TE-009 / SC-CSK-002: STALE in presence, check_running(k1) is False: [k1]."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("check_running", False)
    k1 = new_kernel(A1)

    dead = await check_stale_kernels(build(FakePresence({k1.id: STALE}), pool), [k1])

    assert dead == [k1.id]
    assert asked(a1) == [k1.id]


@pytest.mark.parametrize("scenario", ["SC-TE-010", "SC-CSK-003"])
async def test_sc_te_010_sc_csk_003_stale_but_agent_says_running(scenario: str) -> None:
    """SC-TE-010 / SC-CSK-003: STALE in presence but check_running is True: []."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("check_running", True)
    k1 = new_kernel(A1)

    dead = await check_stale_kernels(build(FakePresence({k1.id: STALE}), pool), [k1])

    assert dead == []
    assert asked(a1) == [k1.id]


async def test_sc_te_011_missing_presence_treated_as_stale() -> None:
    """SC-TE-011: no presence for k1 (absent from the read) and check_running False: [k1]."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    a1.script("check_running", False)
    k1 = new_kernel(A1)

    dead = await check_stale_kernels(build(FakePresence({}), pool), [k1])

    assert dead == [k1.id]
    assert asked(a1) == [k1.id]


async def test_sc_te_012_agent_error_skips_only_that_kernel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SC-TE-012: check_running(k1) raises, k2 answers False: [k2] and a warning for k1."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    k1, k2 = new_kernel(A1), new_kernel(A1)
    a1.script("check_running", Exception("Agent unreachable"), key=k1.id)
    a1.script("check_running", False, key=k2.id)
    presence = FakePresence({k1.id: STALE, k2.id: STALE})

    with caplog.at_level(logging.WARNING):
        dead = await check_stale_kernels(build(presence, pool), [k1, k2])

    assert dead == [k2.id]
    assert asked(a1) == [k1.id, k2.id]
    assert str(k1.id) in caplog.text and "Agent unreachable" in caplog.text


@pytest.mark.parametrize("scenario", ["SC-TE-013", "SC-CSK-005"])
async def test_sc_te_013_sc_csk_005_kernel_without_agent_not_acquired(
    scenario: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SC-TE-013 / SC-CSK-005: a STALE kernel with no agent: [], no client acquired."""
    pool = FakeAgentClientPool()
    pool.add(A1)
    k1 = new_kernel(None)

    with caplog.at_level(logging.WARNING):
        dead = await check_stale_kernels(build(FakePresence({k1.id: STALE}), pool), [k1])

    assert dead == []
    assert pool.acquired == []
    assert str(k1.id) in caplog.text


async def test_sc_te_014_empty_kernel_list_returns_immediately() -> None:
    """SC-TE-014: no kernels: [], no presence read, no agent acquired."""
    pool = FakeAgentClientPool()
    presence = FakePresence()

    assert await check_stale_kernels(build(presence, pool), []) == []

    assert presence.batches == []
    assert pool.acquired == []


async def test_sc_te_015_mixed_results_some_alive_some_dead() -> None:
    """SC-TE-015: k1 ALIVE, k2 STALE+False, k3 STALE+True: [k2]; k1 never asked."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    k1, k2, k3 = new_kernel(A1), new_kernel(A1), new_kernel(A1)
    a1.script("check_running", False, key=k2.id)
    a1.script("check_running", True, key=k3.id)
    presence = FakePresence({k1.id: ALIVE, k2.id: STALE, k3.id: STALE})

    dead = await check_stale_kernels(build(presence, pool), [k1, k2, k3])

    assert dead == [k2.id]
    assert asked(a1) == [k2.id, k3.id]
    assert len(presence.batches) == 1


async def test_sc_te_016_agent_answers_none_kernel_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SC-TE-016: check_running answers None (cannot tell): [] and a warning for k1."""
    pool = FakeAgentClientPool()
    pool.add(A1).script("check_running", None)
    k1 = new_kernel(A1)

    with caplog.at_level(logging.WARNING):
        dead = await check_stale_kernels(build(FakePresence({k1.id: STALE}), pool), [k1])

    assert dead == []
    assert str(k1.id) in caplog.text


async def test_sc_csk_004_agent_connection_error_skips_kernel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SC-CSK-004: k1 on a1 raises "Connection refused", k2 on a2 is False: [k2]."""
    pool = FakeAgentClientPool()
    a1, a2 = pool.add(A1), pool.add(A2)
    a1.script("check_running", Exception("Connection refused"))
    a2.script("check_running", False)
    k1, k2 = new_kernel(A1), new_kernel(A2)
    presence = FakePresence({k1.id: STALE, k2.id: STALE})

    with caplog.at_level(logging.WARNING):
        dead = await check_stale_kernels(build(presence, pool), [k1, k2])

    assert dead == [k2.id]
    assert (asked(a1), asked(a2)) == ([k1.id], [k2.id])
    assert str(k1.id) in caplog.text and "Connection refused" in caplog.text


async def test_unreachable_agent_skips_its_kernels_only(caplog: pytest.LogCaptureFixture) -> None:
    """An agent the pool cannot lend: its kernels are skipped with warnings, others judged."""
    pool = FakeAgentClientPool()
    pool.add(A2).script("check_running", False)
    k1, k2 = new_kernel(A1), new_kernel(A2)
    terminator = build(FakePresence({}), pool)

    with caplog.at_level(logging.WARNING):
        judgement = await judge_stale_kernels(terminator, [k1, k2])

    assert judgement.dead_kernel_ids == [k2.id]
    answer = judgement.candidates[0].answer or ""
    assert answer.startswith("error:") and "not reachable" in answer
    assert str(k1.id) in caplog.text


async def test_stage_two_runs_across_agents_concurrently() -> None:
    """Stage 2 asks agents at the same time.

    Given a1's check_running waits for an event only a2's check_running sets,
    When the sweep judges a1's kernel first and a2's second,
    Then it completes (asking agents one after another would deadlock).
    """
    pool = FakeAgentClientPool()
    a1, a2 = pool.add(A1), pool.add(A2)
    a2_asked = asyncio.Event()

    async def a1_answer(kernel_id: KernelId) -> bool:
        await a2_asked.wait()
        return False

    def a2_answer(kernel_id: KernelId) -> bool:
        a2_asked.set()
        return True

    a1.script("check_running", a1_answer)
    a2.script("check_running", a2_answer)
    k1, k2 = new_kernel(A1), new_kernel(A2)
    terminator = build(FakePresence({}), pool)

    dead = await asyncio.wait_for(check_stale_kernels(terminator, [k1, k2]), timeout=10)

    assert dead == [k1.id]


async def test_stage_two_keeps_per_agent_order_and_bound() -> None:
    """With one check in flight per agent, each agent is asked in input order."""
    pool = FakeAgentClientPool()
    a1, a2 = pool.add(A1), pool.add(A2)
    in_flight: dict[AgentId, int] = {A1: 0, A2: 0}
    peak: dict[AgentId, int] = {A1: 0, A2: 0}

    def counting(agent: AgentId) -> object:
        async def answer(kernel_id: KernelId) -> bool:
            in_flight[agent] += 1
            peak[agent] = max(peak[agent], in_flight[agent])
            for _ in range(3):
                await asyncio.sleep(0)
            in_flight[agent] -= 1
            return False

        return answer

    a1.script("check_running", counting(A1))
    a2.script("check_running", counting(A2))
    kernels = [new_kernel(A1 if i % 3 else A2) for i in range(9)]

    dead = await check_stale_kernels(build(FakePresence({}), pool, concurrency=1), kernels)

    assert dead == [k.id for k in kernels]
    assert asked(a1) == [k.id for k in kernels if k.agent_id == A1]
    assert asked(a2) == [k.id for k in kernels if k.agent_id == A2]
    assert peak == {A1: 1, A2: 1}
    assert pool.acquired.count(A1) == 1 and pool.acquired.count(A2) == 1


async def test_judgement_records_evidence_per_candidate() -> None:
    """Each candidate's evidence: stage-1 status, last_presence, why it was suspected, and the
    agent's answer."""
    pool = FakeAgentClientPool()
    a1 = pool.add(A1)
    alive, dead, missing, unsure, failing = (new_kernel(A1) for _ in range(5))
    orphan = new_kernel(None)
    a1.script("check_running", False, key=dead.id)
    a1.script("check_running", None, key=unsure.id)
    a1.script("check_running", AgentError("boom"), key=failing.id)
    a1.script("check_running", True, key=missing.id)
    presence = FakePresence(
        {alive.id: ALIVE, dead.id: STALE, unsure.id: STALE, failing.id: STALE, orphan.id: STALE}
    )
    kernels = [alive, dead, missing, unsure, failing, orphan]

    judgement = await judge_stale_kernels(build(presence, pool), kernels)

    evidence = judgement.evidence()
    assert str(alive.id) not in evidence
    assert evidence[str(dead.id)] == {
        "agent_id": "a1",
        "presence": "STALE",
        "last_presence": 500.0,
        "check_running": "False",
        "suspected": "presence stale since 1970-01-01T00:08:20+00:00",
    }
    assert evidence[str(missing.id)]["presence"] == "missing"
    assert evidence[str(missing.id)]["suspected"] == "presence missing"
    assert evidence[str(missing.id)]["check_running"] == "True"
    assert evidence[str(unsure.id)]["check_running"] == "None"
    assert evidence[str(failing.id)]["check_running"] == "error: boom"
    assert evidence[str(orphan.id)]["check_running"] == "no agent"
    assert judgement.dead_kernel_ids == [dead.id]
    assert [e.kernel_id for e in judgement.undecided] == [unsure.id, failing.id, orphan.id]
    assert (judgement.total, len(judgement.candidates)) == (6, 5)


async def test_presence_unavailable_propagates_without_agent_calls() -> None:
    """A presence store that cannot be read stops the sweep before any agent is asked."""
    pool = FakeAgentClientPool()
    pool.add(A1)
    presence = FakePresence()
    presence.unavailable = True

    with pytest.raises(PresenceUnavailable):
        await check_stale_kernels(build(presence, pool), [new_kernel(A1)])

    assert pool.acquired == []


async def test_stage_one_reads_presence_one_page_at_a_time() -> None:
    """Stage 1 over more kernels than a page: one presence read per page, candidates of
    every page kept in input order, and the judgement counts all kernels."""
    pool = FakeAgentClientPool()
    pool.add(A1)
    kernels = [new_kernel(A1) for _ in range(7)]
    stale = {kernels[1].id, kernels[4].id, kernels[6].id}
    presence = FakePresence({k.id: STALE if k.id in stale else ALIVE for k in kernels})
    terminator = SessionTerminator(
        pool, presence, InProcessFanOut(_no_fanout), presence_page_size=3
    )

    judgement = await terminator.read_presence(kernels)

    assert presence.batches == [[k.id for k in kernels[i : i + 3]] for i in (0, 3, 6)]
    assert judgement.pages == 3
    assert judgement.total == 7
    assert [e.kernel_id for e in judgement.candidates] == [kernels[i].id for i in (1, 4, 6)]
    assert pool.acquired == []
