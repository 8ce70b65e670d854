"""Agent clients of one process share one ZeroMQ context (SC-FA bounded connections).

callosum would give each connection a context of its own (an I/O thread, a reaper thread
and their descriptors); a worker with hundreds of agents cached shares one instead. Closing
one client must close only its socket, never the context the others use.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
import zmq

from sokovan.agent.pool import AgentClientPool, callosum_client_factory
from sokovan.agent.transport import shared_context
from sokovan.config import Settings
from sokovan.errors import UnknownAgent
from sokovan.types import AgentAddress, AgentId, KernelId
from tests.agents import AgentProcess, StartAgents, start_agents

pytestmark = pytest.mark.integration
__all__ = ["start_agents"]  # the fixture, imported for pytest


class Directory:
    def __init__(self, agents: AgentProcess) -> None:
        self.agents = agents

    async def resolve(self, agent_id: AgentId) -> AgentAddress:
        if agent_id not in self.agents.agents:
            raise UnknownAgent(agent_id)
        return AgentAddress(agent_id, self.agents.addr(agent_id))


async def test_clients_share_one_context_and_an_evicted_one_closes_alone(
    start_agents: StartAgents,
) -> None:
    """SC-FA bounded pool: given three agents and a pool of two, when each is asked in turn,
    then the third evicts the first (closing its socket only), the two cached clients still
    answer on the one shared context, and asking the first again connects it anew."""
    agents = await start_agents(count=3, id_prefix="shared")
    ids = [AgentId(a) for a in agents.ids]
    settings = replace(Settings(), agent_pool_size=2, agent_call_timeout=30.0)
    pool = AgentClientPool(Directory(agents), settings, callosum_client_factory(settings))
    context = shared_context()
    # More agents than ZeroMQ's default of 1,023 sockets a context fit in it.
    assert context.get(zmq.MAX_SOCKETS) == context.get(zmq.SOCKET_LIMIT) > 1023
    kernel = KernelId(uuid.uuid4())
    try:
        for agent_id in ids:
            async with pool.acquire(agent_id) as client:
                assert await client.check_running(kernel) is False
                assert _context_of(client) is context
        assert pool.cached_agents() == ids[1:]
        assert not context.closed
        for agent_id in [*ids[1:], ids[0]]:
            async with pool.acquire(agent_id) as client:
                assert await client.check_running(kernel) is False
        assert pool.cached_agents() == [ids[2], ids[0]]
        assert shared_context() is context and not context.closed
    finally:
        await pool.close_all()
    assert not context.closed


def _context_of(client: object) -> object:
    """The ZeroMQ context under a connected client's callosum peer."""
    peer = getattr(client, "_peer", None)
    return getattr(getattr(peer, "_transport", None), "_zctx", None)
