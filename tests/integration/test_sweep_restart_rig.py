"""A restarted agent's kernels are suspects at once (SC-CV-004, SC-CV-010), over real SQLite.

The agents table records when an agent's current instance started (instance_since, the start
the agent reports); the sweep reads the kernels of agents restarted within the stale window
and asks the agent about each one last present before that start.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from redis.asyncio import Redis

from sokovan.records import AgentRow
from sokovan.scheduler.agents import sync_agents
from sokovan.scheduler.sweep_load import load_sweep_targets
from sokovan.types import (
    AgentId,
    HealthCheckStatus,
    KernelId,
    KernelPresence,
    KernelStatus,
    RunStatus,
    RunTrigger,
    SessionStatus,
    utcnow,
)
from tests.agents import RpcClient, StartAgents, registered, start_agents
from tests.rig import Rig, add_session

__all__ = ["start_agents"]  # the fixture, imported for pytest

SWEEP = "sweep_stale_kernels"
A1, A2 = AgentId("a1"), AgentId("a2")


def register(rig: Rig) -> None:
    for agent in (A1, A2):
        rig.repo.upsert_agent(AgentRow(agent, "tcp://127.0.0.1:1"))
        rig.repo.record_instance(agent, "boot-1", utcnow())


def restart(rig: Rig, agent: AgentId, started_at: datetime) -> None:
    rig.repo.record_instance(agent, "boot-2", utcnow(), started_at)


def running(rig: Rig, agents: list[str]) -> list[KernelId]:
    kids: list[KernelId] = []
    for agent in agents:
        _, (kid,) = add_session(rig, [agent], status=SessionStatus.RUNNING)
        rig.repo.transition_kernels([kid], KernelStatus.RUNNING, list(KernelStatus))
        kids.append(kid)
    return kids


def present(at: datetime) -> KernelPresence:
    """Presence written at `at` that is not stale (the fake judges no clock)."""
    return KernelPresence(HealthCheckStatus.HEALTHY, float(int(at.timestamp())))


def status_of(rig: Rig, kids: list[KernelId]) -> dict[KernelId, KernelStatus]:
    return {k.id: k.status for k in rig.repo.kernels_in(list(KernelStatus)) if k.id in kids}


async def test_instance_since_is_the_start_the_agent_reports(rig: Rig) -> None:
    """The first marker records no restart; a new one records the start its agent reports
    (never later than now, else now); the same marker again changes nothing."""
    rig.repo.upsert_agent(AgentRow(A1, "tcp://127.0.0.1:1"))
    now = utcnow()
    rig.repo.record_instance(A1, "boot-1", now, now - timedelta(seconds=900))
    assert rig.repo.agent_identities([A1])[A1].instance_since is None

    started = now - timedelta(seconds=30)
    rig.repo.record_instance(A1, "boot-2", now, started)
    rig.repo.record_instance(A1, "boot-2", now + timedelta(seconds=5), None)
    assert rig.repo.agent_identities([A1])[A1].instance_since == started
    assert rig.repo.agents_restarted_since(now - timedelta(seconds=60)) == {A1: started}
    assert rig.repo.agents_restarted_since(now - timedelta(seconds=10)) == {}

    rig.repo.record_contact(A1, "boot-3", now, now + timedelta(hours=1))
    assert rig.repo.agent_identities([A1])[A1].instance_since == now
    rig.repo.record_contact(A1, "boot-4", now, None)
    assert rig.repo.agent_identities([A1])[A1].instance_since == now


async def test_sc_cv_004_kernels_vouched_for_only_before_the_restart_are_asked(
    rig: Rig,
) -> None:
    """SC-CV-004 before presence goes stale.

    Given a1 restarted 5 s ago; k1 and k2 on a1 last present 40 s before that (by the old
    instance; their hashes survived), k3 on a1 present since the restart, k4 on a2 (not
    restarted) last present as long ago as k1,
    When the sweep runs, Then a1 is asked about k1 and k2 only (the new instance never
    vouched for them); k1, which a1 reports not running, is TERMINATED (STALE_KERNEL) on
    evidence naming the restart with its presence still HEALTHY, and its session goes
    TERMINATING; k2, which a1 reports running, stays RUNNING; k3 and k4 are not suspects,
    a2 is never asked.
    """
    register(rig)
    started = utcnow() - timedelta(seconds=5)
    restart(rig, A1, started)
    k1, k2, k3, k4 = running(rig, ["a1", "a1", "a1", "a2"])
    old = present(started - timedelta(seconds=40))
    rig.presence.statuses = {k1: old, k2: old, k3: present(started), k4: old}
    rig.agents["a1"].script("check_running", lambda kid: kid == k2)

    report = await rig.coordinator.run(SWEEP, RunTrigger.BEAT)

    assert report.status == RunStatus.SUCCEEDED and report.run_id is not None
    run = rig.ledger.get_run(report.run_id)
    assert run.note is not None and "1 stale kernel(s) terminated" in run.note
    items = {i.item_id: i for i in rig.ledger.items(run.id)}
    assert set(items) == {str(k1), str(k2)}
    evidence = items[str(k1)].evidence
    assert evidence["presence"] == "HEALTHY" and evidence["check_running"] == "False"
    assert str(evidence["suspected"]).startswith("agent restarted at")
    assert items[str(k2)].evidence["verdict"] == "alive"
    asked = [c.args[0] for c in rig.agents["a1"].calls_to("check_running")]
    assert sorted(asked) == sorted([k1, k2])
    assert rig.agents["a2"].calls_to("check_running") == []
    # Only the restarted agent's kernels were read again (the handler's stage 1).
    assert {k for batch in rig.presence.batches for k in batch} == {k1, k2, k3}
    states = status_of(rig, [k1, k2, k3, k4])
    assert states[k1] is KernelStatus.TERMINATED
    assert {states[k] for k in (k2, k3, k4)} == {KernelStatus.RUNNING}
    (reaped,) = rig.repo.kernels_in([KernelStatus.TERMINATED], only=[k1])
    session = rig.repo.get_session(reaped.session_id)
    assert session.status in (SessionStatus.TERMINATING, SessionStatus.TERMINATED)


async def test_loading_keeps_every_kernel_of_a_restarted_agent_and_no_other(rig: Rig) -> None:
    """Stage 1's load: a restarted agent's kernels are kept whatever their presence (searched
    by agent), besides the stale and missing ones; under a budget only those of its pages."""
    kids = running(rig, ["a1", "a2", "a1", "a2", "a2", "a1"])
    fresh = present(utcnow())
    rig.presence.statuses = {k: fresh for k in kids[:5]}  # kids[5] has no presence
    statuses = [KernelStatus.RUNNING]

    full = await load_sweep_targets(
        rig.store, rig.presence, statuses, page_size=2, restarted=frozenset({A1})
    )
    budgeted = await load_sweep_targets(
        rig.store, rig.presence, statuses, page_size=2, budget=3, restarted=frozenset({A1})
    )
    plain = await load_sweep_targets(rig.store, rig.presence, statuses, page_size=2)

    assert full.total == 6 and {k.id for k in full.groups["default"].suspects} == {
        kids[0],
        kids[2],
        kids[5],
    }
    assert len(full.groups["default"].suspects) == 3
    assert budgeted.total == 3
    assert {k.id for k in budgeted.groups["default"].suspects} == {kids[0], kids[2]}
    assert {k.id for k in plain.groups["default"].suspects} == {kids[5]}


async def test_a_restart_older_than_the_stale_window_reads_nothing_again(rig: Rig) -> None:
    """A restart longer ago than the stale window (plus a sweep interval) is left to the
    ordinary rule: the sweep reads no kernel of that agent again and asks nobody."""
    register(rig)
    restart(rig, A1, utcnow() - timedelta(seconds=400))
    kids = running(rig, ["a1", "a1"])
    rig.presence.statuses = {k: present(utcnow() - timedelta(seconds=500)) for k in kids}

    report = await rig.coordinator.run(SWEEP, RunTrigger.BEAT)

    assert report.status == RunStatus.SUCCEEDED
    assert rig.presence.batches == []
    assert rig.agents["a1"].calls == []


async def test_sync_records_the_start_a_restarted_reference_agent_reports(
    rig: Rig, start_agents: StartAgents, redis: Redis
) -> None:
    """A reference agent reports its instance and its start (on the presence store's clock)
    in its registration and health; after it restarts with its id, sync records that start
    as instance_since."""
    agent_id = f"r-{uuid.uuid4().hex[:8]}"
    first = await start_agents(agent_id=agent_id)
    await sync_agents(redis, rig.store)
    before = (await registered(first.redis_url))[agent_id]
    await first.stop()
    seconds, _ = await redis.time()

    second = await start_agents(agent_id=agent_id)
    await sync_agents(redis, rig.store)
    after = (await registered(second.redis_url))[agent_id]
    async with RpcClient(second.addr(), agent_id) as rpc:
        health = await rpc.call("health")

    assert after["instance_id"] != before["instance_id"]
    assert after["started_at"] >= seconds
    assert (health["instance_id"], health["started_at"]) == (
        after["instance_id"],
        after["started_at"],
    )
    identity = rig.repo.agent_identities([AgentId(agent_id)])[AgentId(agent_id)]
    assert identity.instance_id == after["instance_id"]
    assert identity.instance_since is not None
    assert abs(identity.instance_since.timestamp() - after["started_at"]) < 1e-3
    assert rig.repo.agents_restarted_since(identity.instance_since) == {
        AgentId(agent_id): identity.instance_since
    }
