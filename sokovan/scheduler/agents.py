"""Copies agents' self-registrations from Valkey into the agents table."""

from __future__ import annotations

import asyncio
import json
import logging

from redis.asyncio import Redis

from sokovan import constants as C
from sokovan.db.repository import AgentRow, SchedulerRepository
from sokovan.types import AgentId, ResourceSlot

log = logging.getLogger(__name__)


async def sync_agents(
    redis: Redis, repo: SchedulerRepository, lost_after: float = 60.0
) -> dict[str, int]:
    """Upserts registered agents; marks those with an old heartbeat (or none) LOST."""
    raw = await redis.hgetall(C.AGENT_REGISTRY_KEY)
    seconds, _ = await redis.time()
    seen: set[str] = set()
    alive = lost = 0
    for field, value in raw.items():
        agent_id = field.decode() if isinstance(field, bytes) else str(field)
        try:
            info = json.loads(value)
            fresh = float(seconds) - float(info.get("heartbeat", 0)) <= lost_after
            row = AgentRow(
                id=AgentId(agent_id),
                rpc_addr=str(info["rpc_addr"]),
                scaling_group=str(info.get("scaling_group", "default")),
                status="ALIVE" if fresh else "LOST",
                runtime=info.get("runtime"),
                capacity=ResourceSlot.from_json(info.get("capacity")),
            )
        except (ValueError, KeyError, TypeError) as e:
            log.warning("agent %s has an unreadable registration: %s", agent_id, e)
            continue
        await asyncio.to_thread(repo.upsert_agent, row)
        seen.add(agent_id)
        alive += fresh
        lost += not fresh
    known = {a.id for a in await asyncio.to_thread(repo.list_agents) if a.runtime is not None}
    gone = known - seen
    if gone:
        lost += await asyncio.to_thread(repo.mark_agents, gone, "LOST")
    return {"alive": alive, "lost": lost}
