"""RUNNING sessions put straight into the database and onto reference agents, for crash tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from sokovan.db.repository import NewKernel
from sokovan.types import AgentId, KernelId, ResourceSlot, SessionId, SessionStatus
from tests.agents import RpcClient
from tests.cluster import IMAGE, Cluster

SLOTS = {"cpu": "1", "mem": "1073741824"}


async def place_sessions(
    c: Cluster, layouts: Sequence[Sequence[str]]
) -> dict[SessionId, dict[KernelId, AgentId]]:
    """One RUNNING session per layout (a list of agent ids, one per kernel), created on the
    agents too; returns session -> kernel -> agent."""
    slots = ResourceSlot.from_json(SLOTS)
    agent_ids = sorted({a for layout in layouts for a in layout})
    rpcs = {a: RpcClient(c.agents.addr(a), a) for a in agent_ids}
    for rpc in rpcs.values():
        await rpc.__aenter__()
    placed: dict[SessionId, dict[KernelId, AgentId]] = {}
    try:
        for n, layout in enumerate(layouts):
            sid = SessionId(uuid.uuid4())
            kernels = [
                NewKernel(
                    KernelId(uuid.uuid4()),
                    AgentId(agent_id),
                    IMAGE,
                    slots,
                    cluster_role="main" if i == 0 else "sub",
                    cluster_idx=i + 1,
                    cluster_hostname=f"node{i + 1}",
                )
                for i, agent_id in enumerate(layout)
            ]
            c.repo.create_session(
                session_id=sid, name=f"s{n}", kernels_=kernels, status=SessionStatus.RUNNING
            )
            config = {"image": {"canonical": IMAGE}, "resource_slots": SLOTS}
            await asyncio.gather(
                *(
                    rpcs[str(k.agent_id)].call("create_kernels", str(sid), [str(k.id)], [config])
                    for k in kernels
                )
            )
            placed[sid] = {k.id: AgentId(str(k.agent_id)) for k in kernels}
    finally:
        for rpc in rpcs.values():
            await rpc.__aexit__(None, None, None)
    return placed


async def kernels_held(c: Cluster, agent_ids: Sequence[str]) -> dict[str, int]:
    """Agent id -> kernels the agent still holds."""
    held: dict[str, int] = {}
    for agent_id in agent_ids:
        async with RpcClient(c.agents.addr(agent_id), agent_id) as rpc:
            held[agent_id] = int((await rpc.call("health"))["kernels"])
    return held


def submit_on(c: Cluster, agent_id: str) -> SessionId:
    """A one-kernel session submitted (SCHEDULED) on `agent_id`, without kicking a handler."""
    from sokovan.admission.parse import parse_create
    from sokovan.admission.schemas import Limits
    from sokovan.records import SessionRequest
    from sokovan.scheduler.submit import submit_session

    # A quarter core each, so many fit on one reference agent (8 cores) without queueing.
    small = {"cpu": "0.25", "mem": str(2**20)}
    request = parse_create(
        {"image": IMAGE, "agents": [agent_id], "resource_slots": small}, Limits()
    )
    assert isinstance(request, SessionRequest), request
    return submit_session(c.repo, request).session_id
