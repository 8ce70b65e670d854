"""Node maintenance: cordon, uncordon and drain an agent.

A cordoned agent gets no new kernel; its sessions run on. A drain cordons the agent and
records its intent (mode and deadline) in SQL, then ends what runs there: at once (mode
`terminate`: sessions TERMINATING with reason AGENT_DRAINED, their TERMINATING deadline no
later than the drain's), or at the deadline (mode `wait`: sessions get until then to end on
their own). `continue_drains` re-reads every unfinished drain, so a worker that dies midway
leaves nothing undone: the next check_agents tick carries the drain on and marks it done
once the agent holds no live kernel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sokovan import constants as C
from sokovan.ports import SchedulerStore
from sokovan.records import AgentRow
from sokovan.scheduler.transitions import request_termination
from sokovan.types import AgentId, SessionId, SessionStatus, utcnow

log = logging.getLogger(__name__)

# The handler that carries drains on and marks them done (named here to avoid an import
# circle: the terminate handler starts it when it empties a draining agent).
DRAIN_HANDLER = "check_agents"


class DrainMode(StrEnum):
    """How a drain ends the agent's sessions."""

    TERMINATE = "terminate"  # at once, through the terminate handler
    WAIT = "wait"  # let them end on their own; terminate what is left at the deadline


@dataclass(frozen=True, slots=True)
class DrainStep:
    """What one look at a draining agent found and did."""

    agent: AgentRow
    live_sessions: tuple[SessionId, ...]
    # Sessions the terminate handler has to end now (moved now or already TERMINATING).
    terminating: tuple[SessionId, ...]
    done: bool


async def cordon(repo: SchedulerStore, agent_id: AgentId) -> AgentRow:
    """Stops new placements on the agent; raises UnknownAgent for an unknown id."""
    row = await repo.cordon_agent(agent_id)
    log.info("agent %s cordoned", agent_id)
    return row


async def uncordon(repo: SchedulerStore, agent_id: AgentId) -> AgentRow:
    """Lets placement use the agent again (and stops a drain where it is)."""
    row = await repo.uncordon_agent(agent_id)
    log.info("agent %s uncordoned", agent_id)
    return row


async def drain(
    repo: SchedulerStore, agent_id: AgentId, mode: DrainMode, deadline: datetime
) -> DrainStep:
    """Cordons the agent, records the drain, and takes its first step."""
    row = await repo.start_drain(agent_id, str(mode), deadline)
    log.info("agent %s draining (%s) until %s", agent_id, mode, deadline.isoformat())
    return await step(repo, row, utcnow())


async def step(repo: SchedulerStore, agent: AgentRow, now: datetime) -> DrainStep:
    """One look at a draining agent: end what the drain's mode says is due; done when empty."""
    on_agent = await repo.sessions_on_agent(agent.id)
    if not on_agent:
        done = await repo.finish_drain(agent.id)
        if done:
            log.info("agent %s drained", agent.id)
        return DrainStep(agent, (), (), done)
    sids = tuple(on_agent)
    deadline = agent.drain_deadline or now
    if agent.drain_mode == DrainMode.WAIT and now < deadline:
        return DrainStep(agent, sids, (), False)
    live = [s for s, st in on_agent.items() if st != SessionStatus.TERMINATING]
    moved = await request_termination(repo, live, C.AGENT_DRAINED_REASON)
    if moved:
        log.info("agent %s drain: %d session(s) to TERMINATING", agent.id, len(moved))
    # Past the drain's deadline the terminate handler gives up what cannot be destroyed.
    await repo.bring_deadlines_forward(sids, deadline)
    return DrainStep(agent, sids, sids, False)


async def continue_drains(repo: SchedulerStore) -> list[DrainStep]:
    """One step of every unfinished drain (level-triggered: SQL says what remains)."""
    now = utcnow()
    agents = await repo.draining_agents()
    return [await step(repo, agent, now) for agent in agents]
