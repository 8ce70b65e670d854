"""Copies agents' self-registrations from Valkey into the agents table."""

from __future__ import annotations

import json
import logging

from redis.asyncio import Redis

from sokovan import constants as C
from sokovan.ports import AgentStore
from sokovan.records import AgentRow
from sokovan.scheduler.terminator.identity import reported_start
from sokovan.types import AgentId, AgentLiveness, ResourceSlot, utcnow

log = logging.getLogger(__name__)


async def sync_agents(redis: Redis, repo: AgentStore, lost_after: float = 60.0) -> dict[str, int]:
    """Upserts registered agents and their instance markers; stale or gone ones turn LOST.

    A known agent keeps its liveness otherwise: the liveness check's pings own it.
    """
    raw = await redis.hgetall(C.AGENT_REGISTRY_KEY)
    seconds, _ = await redis.time()
    now = utcnow()
    seen: set[str] = set()
    stale: list[AgentId] = []
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
            instance = info.get("instance_id")
            started_at = reported_start(info)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("agent %s has an unreadable registration: %s", agent_id, e)
            continue
        await repo.upsert_agent(row, keep_status=True)
        instance_id = None if instance is None else str(instance)
        await repo.record_instance(row.id, instance_id, now, started_at)
        seen.add(agent_id)
        if not fresh:
            stale.append(row.id)
    known = {a.id for a in await repo.list_agents() if a.runtime is not None}
    stale.extend(AgentId(a) for a in known - seen)
    await repo.mark_liveness(stale, AgentLiveness.LOST, now)
    return {"alive": len(seen) - len(set(stale) & seen), "lost": len(stale)}
