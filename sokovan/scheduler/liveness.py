"""Agent liveness: ping every agent, ALIVE -> UNREACHABLE -> LOST, and what follows from LOST.

Kernels of an agent LOST for longer than the grace period are force-terminated (reason
AGENT_LOST, slots freed, evidence with the agent's last contact) and remembered; when the
agent answers again, their leftover containers there are destroyed (reconciliation).
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
from sokovan.db.ledger import utcnow
from sokovan.db.liveness import AgentContact, Leftover
from sokovan.db.repository import SchedulerRepository
from sokovan.errors import describe_error
from sokovan.ports import AgentClientPool
from sokovan.scheduler.transitions import finish_terminated_sessions, request_termination
from sokovan.types import AgentId, AgentLiveness, ItemOutcome, KernelId, KernelInfo, SessionId

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


async def ping_agent(pool: AgentClientPool, agent_id: AgentId, limit_sec: float) -> Ping:
    """Asks one agent for its health within `limit_sec`; never raises."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit_sec):
            async with pool.acquire(agent_id) as client:
                report = await client.health()
    except Exception as e:
        return Ping(agent_id, error=describe_error(e), took=time.monotonic() - started)
    instance = report.get("instance_id") if isinstance(report, Mapping) else None
    return Ping(
        agent_id, None if instance is None else str(instance), None, time.monotonic() - started
    )


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
    repo: SchedulerRepository, pool: AgentClientPool, t: Thresholds
) -> tuple[list[ItemOutcome], list[AgentId]]:
    """Pings every registered agent at once; records contacts and state changes.

    Returns an outcome per agent that did not answer or changed state, and those that answered.
    """
    contacts = await asyncio.to_thread(repo.agent_contacts)
    pings = await asyncio.gather(*(ping_agent(pool, c.id, t.ping_timeout) for c in contacts))
    now = utcnow()
    outcomes: list[ItemOutcome] = []
    moves: dict[AgentLiveness, list[AgentId]] = {}
    for contact, ping in zip(contacts, pings, strict=True):
        state = next_state(contact, ping, now, t)
        if ping.error is None:
            await asyncio.to_thread(repo.record_contact, contact.id, ping.instance_id, now)
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
        await asyncio.to_thread(repo.mark_liveness, ids, state, now)
    return outcomes, [p.agent_id for p in pings if p.error is None]


async def force_terminate_kernels(
    repo: SchedulerRepository,
    kernels: Sequence[KernelInfo],
    reason: str,
    evidence: Mapping[KernelId, Mapping[str, Any]],
) -> tuple[list[KernelId], list[SessionId]]:
    """TERMINATED with `reason` and evidence, slots freed, kernel ids kept for leftover cleanup.

    Their sessions move to TERMINATING (the rest of each is destroyed by the terminate
    handler), or to TERMINATED when nothing of them is left. Returns the kernels that moved
    and the sessions that went TERMINATING.
    """
    full = {k.id: {**evidence.get(k.id, {}), "reason": reason} for k in kernels}
    moved = await asyncio.to_thread(repo.terminate_kernels_with_evidence, full, reason)
    moved_set = set(moved)
    hit = [k for k in kernels if k.id in moved_set and k.agent_id is not None]
    leftovers = [Leftover(k.id, k.session_id, AgentId(str(k.agent_id)), reason) for k in hit]
    await asyncio.to_thread(repo.remember_leftovers, leftovers, utcnow())
    sessions = sorted({k.session_id for k in hit})
    terminating = await request_termination(repo, sessions, reason)
    await asyncio.to_thread(finish_terminated_sessions, repo, sessions)
    for k in hit:
        log.warning("kernel %s on agent %s terminated: %s", k.id, k.agent_id, reason)
    return moved, terminating


async def terminate_kernels_of_lost_agents(
    repo: SchedulerRepository, t: Thresholds
) -> tuple[list[ItemOutcome], list[SessionId]]:
    """Force-terminates the kernels of agents LOST for longer than the grace period."""
    now = utcnow()
    lost = {
        c.id: c
        for c in await asyncio.to_thread(repo.agent_contacts)
        if c.status is AgentLiveness.LOST
        and c.lost_since is not None
        and now - c.lost_since >= timedelta(seconds=t.lost_grace)
    }
    if not lost:
        return [], []
    kernels = await asyncio.to_thread(repo.live_kernel_infos, list(lost))
    evidence = {k.id: _lost_evidence(k, lost[AgentId(str(k.agent_id))]) for k in kernels}
    moved, terminating = await force_terminate_kernels(repo, kernels, C.AGENT_LOST_REASON, evidence)
    moved_set = set(moved)
    outcomes = [
        ItemOutcome(str(k.id), k.agent_id, False, C.AGENT_LOST_REASON, 0.0, evidence[k.id])
        for k in kernels
        if k.id in moved_set
    ]
    return outcomes, terminating


def _lost_evidence(kernel: KernelInfo, agent: AgentContact) -> dict[str, Any]:
    assert agent.lost_since is not None
    return {
        "kind": "kernel",
        "verdict": "agent_lost",
        "agent_id": agent.id,
        "agent_last_contact": agent.last_contact.isoformat(),
        "agent_lost_since": agent.lost_since.isoformat(),
        "session_id": str(kernel.session_id),
        "from_status": str(kernel.status),
        "occupied_slots": kernel.occupied_slots.to_json(),
    }


async def reconcile_leftovers(
    repo: SchedulerRepository, pool: AgentClientPool, answered: Sequence[AgentId]
) -> list[ItemOutcome]:
    """Destroys leftover containers of force-terminated kernels on agents that answer again."""
    outcomes: list[ItemOutcome] = []
    for agent_id in answered:
        leftovers = await asyncio.to_thread(repo.pending_leftovers, agent_id)
        if not leftovers:
            continue
        results = await _destroy_leftovers(pool, agent_id, leftovers)
        await asyncio.to_thread(repo.settle_leftovers, results, utcnow())
        for x in leftovers:
            error = results[x.kernel_id]
            detail = {
                "kind": "leftover",
                "verdict": "leftover_destroyed" if error is None else "leftover_kept",
                "session_id": str(x.session_id),
                "reason": x.reason,
            }
            outcomes.append(
                ItemOutcome(str(x.kernel_id), agent_id, error is None, error, 0.0, detail)
            )
    return outcomes


async def _destroy_leftovers(
    pool: AgentClientPool, agent_id: AgentId, leftovers: Sequence[Leftover]
) -> dict[KernelId, str | None]:
    results: dict[KernelId, str | None] = {}
    try:
        async with pool.acquire(agent_id) as client:
            for x in leftovers:
                try:
                    await client.destroy_kernel(x.kernel_id, x.session_id, x.reason, True)
                    results[x.kernel_id] = None
                    log.warning(
                        "leftover of kernel %s destroyed on agent %s", x.kernel_id, agent_id
                    )
                except Exception as e:
                    results[x.kernel_id] = describe_error(e)
                    log.warning("leftover of kernel %s on %s kept: %s", x.kernel_id, agent_id, e)
    except Exception as e:
        for x in leftovers:
            results.setdefault(x.kernel_id, describe_error(e))
    return results
