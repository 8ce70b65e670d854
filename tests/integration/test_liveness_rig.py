"""Agent liveness over real SQLite and Valkey with stub agents: SC-FA-004, SC-FA-005, SC-FA-006."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from sokovan.config import Settings
from sokovan.db.ledger import utcnow
from sokovan.db.repository import AgentRow
from sokovan.db.schema import agents as agents_table
from sokovan.errors import AgentUnavailable, InvalidRequest, NoCapacity
from sokovan.scheduler.handlers import check_agents
from sokovan.scheduler.handlers.base import HandlerContext
from sokovan.scheduler.liveness import force_terminate_kernels
from sokovan.scheduler.submit import SessionRequest, place
from sokovan.testing import FakeSecretStore
from sokovan.types import AgentId, KernelStatus, ResourceSlot, RunTrigger, SessionStatus
from tests.rig import Rig, add_session

pytestmark = pytest.mark.integration

NAME = check_agents.NAME
SETTINGS = Settings(agent_unreachable_after=30, agent_lost_after=120, agent_lost_grace=300)


def with_liveness(rig: Rig, settings: Settings = SETTINGS) -> None:
    assert rig.fanout.terminator is not None
    ctx = HandlerContext(
        settings=settings,
        repository=rig.repo,
        terminator=rig.fanout.terminator,
        pool=rig.pool,
        secrets=FakeSecretStore(),
        fanout=rig.fanout,
    )
    rig.coordinator.register(check_agents.build(ctx))
    for agent in ("a1", "a2"):
        capacity = ResourceSlot.from_json({"cpu": "8", "mem": str(2**34)})
        rig.repo.upsert_agent(AgentRow(AgentId(agent), "tcp://127.0.0.1:1", capacity=capacity))


def silence(rig: Rig, agent: str, seconds: float) -> None:
    """Makes `agent` unreachable, its last contact `seconds` ago."""
    rig.pool.clients.pop(AgentId(agent), None)
    past = utcnow() - timedelta(seconds=seconds)
    with rig.engine.begin() as conn:
        conn.execute(
            agents_table.update()
            .where(agents_table.c.id == agent)
            .values(last_contact=past, registered_at=past)
        )


def age_lost(rig: Rig, agent: str, seconds: float) -> None:
    with rig.engine.begin() as conn:
        conn.execute(
            agents_table.update()
            .where(agents_table.c.id == agent)
            .values(lost_since=utcnow() - timedelta(seconds=seconds))
        )


def status_of(rig: Rig, agent: str) -> str:
    return rig.repo.get_agent(agent).status


async def test_sc_fa_004_silent_agent_unreachable_then_lost_and_not_placed(rig: Rig) -> None:
    """SC-FA-004: an agent that does not answer turns UNREACHABLE, then LOST; no placement.

    Given a1 registered, never answering, last contact 40 s ago (over 30 s),
    When the liveness check runs, a1 is UNREACHABLE and placement skips it;
    When its silence passes 120 s, the next check marks it LOST; a2 stays ALIVE.
    """
    with_liveness(rig)
    silence(rig, "a1", 40)

    report = await rig.coordinator.run(NAME, RunTrigger.BEAT)

    assert status_of(rig, "a1") == "UNREACHABLE" and status_of(rig, "a2") == "ALIVE"
    items = {i.item_id: i for i in rig.ledger.items(report.run_id)}  # type: ignore[arg-type]
    assert items["a1"].evidence["to"] == "UNREACHABLE" and not items["a1"].ok
    request = SessionRequest(image="python:3.12", agents=(AgentId("a1"),))
    with pytest.raises(InvalidRequest, match="UNREACHABLE"):
        place(request, rig.repo.list_agents(), {})
    chosen = place(SessionRequest(image="python:3.12"), rig.repo.list_agents(), {})
    assert chosen == ["a2"]

    silence(rig, "a1", 130)
    await rig.coordinator.run(NAME, RunTrigger.BEAT)

    assert status_of(rig, "a1") == "LOST"
    assert rig.repo.agent_contacts()[0].lost_since is not None
    rig.pool.clients.pop(AgentId("a2"))
    silence(rig, "a2", 10)
    await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert status_of(rig, "a2") == "ALIVE", "10 s of silence is below the UNREACHABLE threshold"
    with pytest.raises(NoCapacity):
        place(
            SessionRequest(
                image="python:3.12", resource_slots=ResourceSlot.from_json({"cpu": "99"})
            ),
            rig.repo.list_agents(),
            {},
        )


async def test_sc_fa_005_kernels_of_a_lost_agent_end_agent_lost_after_the_grace(rig: Rig) -> None:
    """SC-FA-005: after the grace period a LOST agent's kernels are TERMINATED (AGENT_LOST).

    Given a RUNNING session with a kernel on a1 and one on a2, and a1 LOST,
    When the grace has not passed, nothing moves; once it has,
    Then a1's kernel is TERMINATED with AGENT_LOST, its slots no longer count on a1, the
    evidence names a1's last contact, the session goes TERMINATING so a2's kernel is
    destroyed by the terminate handler, and the kernel is remembered as a leftover.
    """
    with_liveness(rig)
    sid, (k1, k2) = add_session(rig, ["a1", "a2"], status=SessionStatus.RUNNING)
    silence(rig, "a1", 200)
    await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert status_of(rig, "a1") == "LOST"
    assert rig.repo.kernel_statuses([k1])[k1] == KernelStatus.RUNNING, "within the grace"

    age_lost(rig, "a1", 301)
    report = await rig.coordinator.run(NAME, RunTrigger.BEAT)

    assert rig.repo.kernel_statuses([k1, k2]) == {
        k1: KernelStatus.TERMINATED,
        k2: KernelStatus.TERMINATING,
    }
    assert "a1" not in rig.repo.occupied_by_agent()
    items = {i.item_id: i for i in rig.ledger.items(report.run_id)}  # type: ignore[arg-type]
    evidence = items[str(k1)].evidence
    assert evidence["verdict"] == "agent_lost" and evidence["agent_id"] == "a1"
    last_contact = rig.repo.agent_contacts()[0].last_contact
    assert evidence["agent_last_contact"] == last_contact.isoformat()
    assert evidence["occupied_slots"] == {"cpu": "1", "mem": "1024"}
    assert items[str(k1)].error == "AGENT_LOST"
    with rig.engine.connect() as conn:
        row = conn.execute(sa.text("select status_info from kernels where id = :k"), {"k": k1.hex})
        assert row.scalar_one() == "AGENT_LOST"
    assert rig.repo.get_session(sid).status == SessionStatus.TERMINATING
    assert [x.kernel_id for x in rig.repo.pending_leftovers(AgentId("a1"))] == [k1]
    await rig.coordinator.run("terminate_sessions", RunTrigger.EVENT, [str(sid)])
    assert rig.destroyed() == [k2], "only the live agent is asked to destroy"
    assert rig.repo.get_session(sid).status == SessionStatus.TERMINATED


async def test_sc_fa_006_lost_agent_returns_and_its_leftovers_are_destroyed(rig: Rig) -> None:
    """SC-FA-006: when a LOST agent answers again, leftovers of its terminated kernels go.

    Given a1 LOST past the grace with one kernel terminated AGENT_LOST,
    When a1 answers a later liveness check,
    Then a1 is ALIVE again, destroy_kernel is sent for the leftover, the run records it,
    and it is not sent again on the next check.
    """
    with_liveness(rig)
    sid, (k1,) = add_session(rig, ["a1"], status=SessionStatus.RUNNING)
    a1 = rig.agents["a1"]
    silence(rig, "a1", 200)
    await rig.coordinator.run(NAME, RunTrigger.BEAT)
    age_lost(rig, "a1", 301)
    await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert rig.repo.kernel_statuses([k1])[k1] == KernelStatus.TERMINATED

    rig.pool.clients[AgentId("a1")] = a1
    report = await rig.coordinator.run(NAME, RunTrigger.BEAT)

    assert status_of(rig, "a1") == "ALIVE"
    assert [c.args for c in a1.calls_to("destroy_kernel")] == [(k1, sid, "AGENT_LOST")]
    items = {i.item_id: i for i in rig.ledger.items(report.run_id)}  # type: ignore[arg-type]
    assert items[str(k1)].ok and items[str(k1)].evidence["verdict"] == "leftover_destroyed"
    assert rig.repo.pending_leftovers(AgentId("a1")) == []
    await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert len(a1.calls_to("destroy_kernel")) == 1


async def test_leftover_destroy_failure_is_kept_for_the_next_answer(rig: Rig) -> None:
    """A leftover whose destroy fails stays pending, with its error, and is tried again."""
    with_liveness(rig)
    _, (k1,) = add_session(rig, ["a1"], status=SessionStatus.RUNNING)
    a1 = rig.agents["a1"]
    a1.script("destroy_kernel", AgentUnavailable("gone again"))
    silence(rig, "a1", 200)
    await rig.coordinator.run(NAME, RunTrigger.BEAT)
    age_lost(rig, "a1", 301)
    await rig.coordinator.run(NAME, RunTrigger.BEAT)
    rig.pool.clients[AgentId("a1")] = a1

    await rig.coordinator.run(NAME, RunTrigger.BEAT)

    assert [x.kernel_id for x in rig.repo.pending_leftovers(AgentId("a1"))] == [k1]
    a1.script("destroy_kernel", None)
    await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert rig.repo.pending_leftovers(AgentId("a1")) == []


async def test_remove_agent_refuses_with_live_kernels_unless_forced(rig: Rig) -> None:
    """`agents remove` refuses while kernels live on the agent; with force it removes it."""
    with_liveness(rig)
    add_session(rig, ["a1"], status=SessionStatus.RUNNING)

    with pytest.raises(InvalidRequest, match="live kernel"):
        rig.repo.remove_agent(AgentId("a1"))
    assert status_of(rig, "a1") == "ALIVE"
    rig.repo.remove_agent(AgentId("a2"))
    assert {a.id for a in rig.repo.list_agents()} == {"a1"}


async def test_forced_remove_ends_the_kernels_first(rig: Rig) -> None:
    """`agents remove --force`: kernels end AGENT_REMOVED (remembered), then the agent goes."""
    with_liveness(rig)
    sid, (k1,) = add_session(rig, ["a1"], status=SessionStatus.RUNNING)
    live = rig.repo.live_kernel_infos([AgentId("a1")])

    moved, _ = await force_terminate_kernels(rig.repo, live, "AGENT_REMOVED", {})
    rig.repo.remove_agent(AgentId("a1"), force=True)

    assert moved == [k1]
    assert rig.repo.kernel_statuses([k1])[k1] == KernelStatus.TERMINATED
    assert rig.repo.get_session(sid).status == SessionStatus.TERMINATED
    assert {a.id for a in rig.repo.list_agents()} == {"a2"}
    assert [x.reason for x in rig.repo.pending_leftovers(AgentId("a1"))] == ["AGENT_REMOVED"]
