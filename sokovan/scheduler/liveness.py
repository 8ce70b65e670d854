"""Agent liveness: ping every agent, ALIVE -> UNREACHABLE -> LOST, and what follows from LOST.

Kernels of an agent LOST for longer than the grace period take the TERMINATING deadline path
(reason AGENT_LOST: slots freed, evidence with the agent's last contact, the kernel remembered);
when the agent answers again, reconcile_leftovers destroys their leftover containers there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sokovan import constants as C
from sokovan.errors import describe_error
from sokovan.ports import AgentClient, AgentClientPool, SchedulerStore
from sokovan.records import AgentContact
from sokovan.scheduler.deadlines import AGENT_LOST
from sokovan.scheduler.terminator.identity import is_stranger_error, reported_start
from sokovan.scheduler.transitions import request_termination
from sokovan.types import (
    NIL_UUID,
    AgentId,
    AgentLiveness,
    ItemOutcome,
    KernelId,
    KernelInfo,
    SessionId,
    Verdict,
    utcnow,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When silence makes an agent UNREACHABLE, LOST, and its kernels AGENT_LOST."""

    ping_timeout: float = C.AGENT_PING_TIMEOUT_SEC
    unreachable_after: float = C.AGENT_UNREACHABLE_AFTER_SEC
    lost_after: float = C.AGENT_LOST_AFTER_SEC
    lost_grace: float = C.AGENT_LOST_GRACE_SEC


@dataclass(frozen=True, slots=True)
class Ping:
    """One agent's answer to a ping: its instance marker, or why it did not answer."""

    agent_id: AgentId
    instance_id: str | None = None
    error: str | None = None
    took: float = 0.0
    # When the answering instance says it started.
    started_at: datetime | None = None


async def ping_agent(pool: AgentClientPool, agent_id: AgentId, limit_sec: float) -> Ping:
    """Asks one agent for its health within `limit_sec`; never raises.

    Another agent at the address is no contact with this one, so an identity mismatch that
    persists takes the agent to UNREACHABLE and LOST like silence does (its kernels then end
    AGENT_LOST) instead of keeping it ALIVE while the sweep cannot verify its kernels.
    """
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit_sec):
            async with pool.acquire(agent_id) as client:
                said, stranger = await _health_and_identity(client, agent_id)
    except Exception as e:
        return Ping(agent_id, error=describe_error(e), took=time.monotonic() - started)
    took = time.monotonic() - started
    if stranger is not None:
        return Ping(agent_id, error=stranger, took=took)
    instance = said.get("instance_id")
    instance_id = None if instance is None else str(instance)
    return Ping(agent_id, instance_id, None, took, reported_start(said))


async def _health_and_identity(
    client: AgentClient, agent_id: AgentId
) -> tuple[dict[str, Any], str | None]:
    """The agent's health report, and why it is not `agent_id` when it is not."""
    report = await client.health()
    said = dict(report) if isinstance(report, Mapping) else {}
    if said.get("agent_id"):
        if str(said["agent_id"]) == str(agent_id):
            return said, None
        return said, f"answered as agent {str(said['agent_id'])[:64]!r}"
    # A real agent's report names no id; a call carrying the id tells: it refuses one it does
    # not serve. No kernel has the nil id, so any other answer says nothing of identity.
    try:
        await client.check_running(KernelId(NIL_UUID))
    except Exception as e:
        if is_stranger_error(e):
            return said, f"refuses agent id {agent_id!r}: {describe_error(e)}"
    return said, None


def next_state(contact: AgentContact, ping: Ping, now: datetime, t: Thresholds) -> AgentLiveness:
    """The state an agent moves to after this ping."""
    if ping.error is None:
        return AgentLiveness.ALIVE
    silent = (now - contact.last_contact).total_seconds()
    if silent >= t.lost_after or contact.status is AgentLiveness.LOST:
        return AgentLiveness.LOST
    if silent >= t.unreachable_after or contact.status is AgentLiveness.UNREACHABLE:
        return AgentLiveness.UNREACHABLE
    return AgentLiveness.ALIVE


def _agent_outcome(contact: AgentContact, ping: Ping, state: AgentLiveness) -> ItemOutcome:
    detail: dict[str, Any] = {
        "kind": "agent",
        "from": str(contact.status),
        "to": str(state),
        "last_contact": contact.last_contact.isoformat(),
        "instance_id": ping.instance_id,
    }
    ok = ping.error is None
    return ItemOutcome(contact.id, contact.id, ok, ping.error, ping.took, detail, skipped=False)


async def check_agents(
    repo: SchedulerStore, pool: AgentClientPool, t: Thresholds
) -> tuple[list[ItemOutcome], list[AgentId]]:
    """Pings every registered agent at once; records contacts and state changes.

    Returns an outcome per agent that did not answer or changed state, and the agents that
    answered again after being UNREACHABLE or LOST.
    """
    contacts = await repo.agent_contacts()
    pings = await asyncio.gather(*(ping_agent(pool, c.id, t.ping_timeout) for c in contacts))
    now = utcnow()
    outcomes: list[ItemOutcome] = []
    moves: dict[AgentLiveness, list[AgentId]] = {}
    for contact, ping in zip(contacts, pings, strict=True):
        state = next_state(contact, ping, now, t)
        if ping.error is None:
            await repo.record_contact(contact.id, ping.instance_id, now, ping.started_at)
            if contact.status is not AgentLiveness.ALIVE:
                log.warning("agent %s answers again (was %s)", contact.id, contact.status)
        elif state is not contact.status:
            moves.setdefault(state, []).append(contact.id)
            log.warning(
                "agent %s %s: no answer since %s: %s",
                contact.id,
                state,
                contact.last_contact.isoformat(),
                ping.error,
            )
        if ping.error is not None or state is not contact.status:
            outcomes.append(_agent_outcome(contact, ping, state))
    for state, ids in moves.items():
        await repo.mark_liveness(ids, state, now)
    returned = [
        c.id
        for c, p in zip(contacts, pings, strict=True)
        if p.error is None and c.status is not AgentLiveness.ALIVE
    ]
    return outcomes, returned


async def hand_to_deadline_path(
    repo: SchedulerStore, kernels: Sequence[KernelInfo], reason: str
) -> list[SessionId]:
    """Sends the sessions of `kernels` down the TERMINATING deadline path at once.

    They go TERMINATING (`reason`) with their deadline now, so the terminate handler gives
    up the kernels whose agent is not up (AGENT_LOST on a LOST agent: slots freed, evidence,
    leftover remembered for reconcile_leftovers) and destroys the rest as usual. Returns
    every session handed on.
    """
    sessions = sorted({k.session_id for k in kernels})
    if not sessions:
        return []
    await request_termination(repo, sessions, reason)
    now = utcnow()
    for sid in sessions:
        await repo.set_session_deadline(sid, now)
    return sessions


async def hand_on_lost_agents(
    repo: SchedulerStore, t: Thresholds
) -> tuple[list[ItemOutcome], list[SessionId]]:
    """Kernels of agents LOST for longer than the grace period go down the deadline path."""
    now = utcnow()
    lost = {
        c.id: c
        for c in await repo.agent_contacts()
        if c.status is AgentLiveness.LOST
        and c.lost_since is not None
        and now - c.lost_since >= timedelta(seconds=t.lost_grace)
    }
    if not lost:
        return [], []
    kernels = await repo.live_kernel_infos(list(lost))
    sessions = await hand_to_deadline_path(repo, kernels, AGENT_LOST)
    outcomes = [_lost_outcome(k, lost[AgentId(str(k.agent_id))]) for k in kernels]
    for k in kernels:
        log.warning("kernel %s: agent %s is lost; handed to the deadline path", k.id, k.agent_id)
    return outcomes, sessions


def _lost_outcome(kernel: KernelInfo, agent: AgentContact) -> ItemOutcome:
    assert agent.lost_since is not None
    detail = {
        "kind": "kernel",
        "agent_id": agent.id,
        "agent_last_contact": agent.last_contact.isoformat(),
        "agent_lost_since": agent.lost_since.isoformat(),
        "session_id": str(kernel.session_id),
        "from_status": str(kernel.status),
    }
    return ItemOutcome(str(kernel.id), kernel.agent_id, detail=detail, verdict=Verdict.HANDED_OVER)


async def returned_with_leftovers(
    repo: SchedulerStore, returned: Sequence[AgentId]
) -> list[KernelId]:
    """Leftover kernels still to destroy on agents that answer again, oldest first."""
    if not returned:
        return []
    wanted = set(returned)
    pending = await repo.leftovers()
    return [x.kernel_id for x in pending if x.destroyed_at is None and x.agent_id in wanted]
