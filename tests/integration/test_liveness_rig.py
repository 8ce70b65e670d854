"""Agent liveness over real SQLite and Valkey with stub agents: SC-FA-004, SC-FA-005, SC-FA-006."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from sokovan.config import Settings
from sokovan.db.schema import agents as agents_table
from sokovan.errors import InvalidRequest, NoCapacity
from sokovan.records import AgentRow, SessionRequest
from sokovan.scheduler.handlers import check_agents, reconcile_leftovers
from sokovan.scheduler.handlers.base import HandlerContext
from sokovan.scheduler.handlers.reconcile_leftovers import NAME as RECONCILE
from sokovan.scheduler.handlers.terminate_sessions import NAME as TERMINATE
from sokovan.scheduler.liveness import hand_to_deadline_path
from sokovan.scheduler.submit import place
from sokovan.stubs.secrets import FakeSecretStore
from sokovan.types import (
    AgentId,
    KernelStatus,
    ResourceSlot,
    RunStatus,
    RunTrigger,
    SessionStatus,
    utcnow,
)
from tests.rig import Rig, add_session

pytestmark = pytest.mark.integration

NAME = check_agents.NAME
SETTINGS = Settings(agent_unreachable_after=30, agent_lost_after=120, agent_lost_grace=300)


def with_liveness(rig: Rig, settings: Settings = SETTINGS) -> None:
    assert rig.fanout.terminator is not None
    ctx = HandlerContext(
        settings=settings,
        repository=rig.store,
        terminator=rig.fanout.terminator,
        pool=rig.pool,
        secrets=FakeSecretStore(),
        fanout=rig.fanout,
    )
    rig.coordinator.register(check_agents.build(ctx))
    rig.coordinator.register(reconcile_leftovers.build(ctx))
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
            .values(last_contact=past, registered_at=past, last_seen=past)
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


async def lose_a1_past_the_grace(rig: Rig) -> None:
    """a1 silent until LOST, then LOST for longer than the grace; one check each."""
    silence(rig, "a1", 200)
    await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert status_of(rig, "a1") == "LOST"
    age_lost(rig, "a1", 301)


async def test_sc_fa_005_kernels_of_a_lost_agent_end_agent_lost_after_the_grace(rig: Rig) -> None:
    """SC-FA-005: after the grace period a LOST agent's kernels are TERMINATED (AGENT_LOST).

    Given a RUNNING session with a kernel on a1 and one on a2, and a1 LOST,
    When the grace has not passed, nothing moves; once it has, the liveness check hands the
    session to the TERMINATING deadline path (deadline now) and kicks the terminate handler,
    Then a1's kernel is TERMINATED with AGENT_LOST without a call to a1, its slots no longer
    count on a1, the evidence names a1's last contact, a2's kernel is destroyed as usual,
    the session ends TERMINATED, and a1's kernel is remembered as a leftover.
    """
    with_liveness(rig)
    sid, (k1, k2) = add_session(rig, ["a1", "a2"], status=SessionStatus.RUNNING)
    silence(rig, "a1", 200)
    await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert rig.repo.kernel_statuses([k1])[k1] == KernelStatus.RUNNING, "within the grace"
    age_lost(rig, "a1", 301)

    check = await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert (TERMINATE, RunTrigger.EVENT, [str(sid)]) in rig.kicker.kicks
    handed = {i.item_id: i for i in rig.ledger.items(check.run_id)}  # type: ignore[arg-type]
    assert handed[str(k1)].evidence["verdict"] == "deadline_path"
    assert rig.repo.get_session(sid).status == SessionStatus.TERMINATING
    report = await rig.coordinator.run(TERMINATE, RunTrigger.EVENT, [str(sid)])

    assert rig.repo.kernel_statuses([k1, k2]) == {
        k1: KernelStatus.TERMINATED,
        k2: KernelStatus.TERMINATED,
    }
    assert rig.destroyed() == [k2], "only the live agent is asked to destroy"
    assert rig.repo.get_session(sid).status == SessionStatus.TERMINATED
    assert "a1" not in rig.repo.occupied_by_agent()
    items = {i.item_id: i for i in rig.ledger.items(report.run_id)}  # type: ignore[arg-type]
    evidence = items[str(k1)].evidence
    assert evidence["verdict"] == "agent_lost" and evidence["agent_status"] == "LOST"
    (a1,) = [c for c in rig.repo.agent_contacts() if c.id == "a1"]
    assert evidence["agent_last_contact"] == a1.last_contact.isoformat()
    assert evidence["occupied_slots"] == {"cpu": "1", "mem": "1024"}
    with rig.engine.connect() as conn:
        row = conn.execute(sa.text("select status_info from kernels where id = :k"), {"k": k1.hex})
        assert row.scalar_one() == "AGENT_LOST"
    assert [(x.kernel_id, x.reason) for x in rig.repo.leftovers()] == [(k1, "AGENT_LOST")]


async def test_sc_fa_006_lost_agent_returns_and_its_leftovers_are_destroyed(rig: Rig) -> None:
    """SC-FA-006: when a LOST agent answers again, leftovers of its terminated kernels go.

    Given a1 LOST past the grace with its kernel given up (AGENT_LOST) and remembered,
    When a1 answers a later liveness check,
    Then a1 is ALIVE again, reconcile_leftovers is kicked for a1 and sends destroy_kernel for
    the leftover, its run records it, and the leftover is closed.
    """
    with_liveness(rig)
    sid, (k1,) = add_session(rig, ["a1"], status=SessionStatus.RUNNING)
    a1 = rig.agents["a1"]
    await lose_a1_past_the_grace(rig)
    await rig.coordinator.run(NAME, RunTrigger.BEAT)
    await rig.coordinator.run(TERMINATE, RunTrigger.EVENT, [str(sid)])
    assert rig.repo.kernel_statuses([k1])[k1] == KernelStatus.TERMINATED
    idle = await rig.coordinator.run(RECONCILE, RunTrigger.MANUAL)
    assert idle.status == RunStatus.SUCCEEDED and a1.calls_to("destroy_kernel") == []

    rig.pool.clients[AgentId("a1")] = a1
    await rig.coordinator.run(NAME, RunTrigger.BEAT)

    assert status_of(rig, "a1") == "ALIVE"
    assert (RECONCILE, RunTrigger.EVENT, [str(k1)]) in rig.kicker.kicks
    report = await rig.coordinator.run(RECONCILE, RunTrigger.EVENT, [str(k1)])
    assert [c.args for c in a1.calls_to("destroy_kernel")] == [(k1, sid, "AGENT_LOST")]
    items = {i.item_id: i for i in rig.ledger.items(report.run_id)}  # type: ignore[arg-type]
    assert items[str(k1)].ok
    assert [x.destroyed_at is not None for x in rig.repo.leftovers()] == [True]


async def test_remove_agent_refuses_with_live_kernels_unless_forced(rig: Rig) -> None:
    """`agents remove` refuses while kernels live on the agent; with force it removes it."""
    with_liveness(rig)
    add_session(rig, ["a1"], status=SessionStatus.RUNNING)

    with pytest.raises(InvalidRequest, match="live kernel"):
        rig.repo.remove_agent(AgentId("a1"))
    assert status_of(rig, "a1") == "ALIVE"
    rig.repo.remove_agent(AgentId("a2"))
    assert {a.id for a in rig.repo.list_agents()} == {"a1"}


async def test_forced_remove_hands_the_sessions_to_the_deadline_path(rig: Rig) -> None:
    """`agents remove --force`: the agent goes, its sessions go TERMINATING with deadline now."""
    with_liveness(rig)
    sid, (k1,) = add_session(rig, ["a1"], status=SessionStatus.RUNNING)

    live = rig.repo.remove_agent(AgentId("a1"), force=True)
    infos = rig.repo.kernels_in([KernelStatus.RUNNING], only=live)
    sessions = await hand_to_deadline_path(rig.store, infos, "AGENT_REMOVED")

    assert live == [k1] and sessions == [sid]
    assert {a.id for a in rig.repo.list_agents()} == {"a2"}
    session = rig.repo.get_session(sid)
    assert (session.status, session.status_info) == (SessionStatus.TERMINATING, "AGENT_REMOVED")
    assert session.status_data["deadline_at"]


async def test_a_stranger_answering_the_ping_is_no_contact(rig: Rig) -> None:
    """SC-FA-003/004: another agent at a1's address answers health as itself: a1 stays silent."""
    with_liveness(rig)
    a1 = rig.agents["a1"]
    a1.script("health", {"agent_id": "i-newcomer", "instance_id": "x"})
    silence(rig, "a1", 40)
    rig.pool.clients[AgentId("a1")] = a1  # reachable, but somebody else answers

    report = await rig.coordinator.run(NAME, RunTrigger.BEAT)

    assert status_of(rig, "a1") == "UNREACHABLE"
    items = {i.item_id: i for i in rig.ledger.items(report.run_id)}  # type: ignore[arg-type]
    assert "i-newcomer" in (items["a1"].error or "")
    assert rig.repo.agent_identities([AgentId("a1")])[AgentId("a1")].instance_id is None


async def test_sc_cv_005_an_agent_refusing_its_own_id_is_no_contact(rig: Rig) -> None:
    """SC-CV-005: an identity mismatch that persists does not keep the agent ALIVE.

    Given a1 silent for 40 s, and whoever answers at its address reports no id (as a real
    agent does) but refuses calls carrying a1's id (AgentIdNotFoundError),
    When the liveness check runs, Then a1 is UNREACHABLE (it goes on to LOST and its kernels
    to AGENT_LOST like any silent agent): the sweep's "unverified: identity" does not last.
    """
    from sokovan.errors import AgentRemoteError

    with_liveness(rig)
    a1 = rig.agents["a1"]
    a1.script("health", {"status": "ok", "component": "agent"})
    a1.script(
        "check_running", AgentRemoteError("AgentIdNotFoundError", "not served", "check_running")
    )
    silence(rig, "a1", 40)
    rig.pool.clients[AgentId("a1")] = a1

    report = await rig.coordinator.run(NAME, RunTrigger.BEAT)

    assert status_of(rig, "a1") == "UNREACHABLE"
    items = {i.item_id: i for i in rig.ledger.items(report.run_id)}  # type: ignore[arg-type]
    assert "refuses agent id 'a1'" in (items["a1"].error or "")
    assert status_of(rig, "a2") == "ALIVE"
    # An agent that names no id and serves it stays ALIVE; its probe asked for no kernel.
    a1.script("check_running", False)
    await rig.coordinator.run(NAME, RunTrigger.BEAT)
    assert status_of(rig, "a1") == "ALIVE"
