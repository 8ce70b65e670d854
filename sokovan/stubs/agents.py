"""Stubs of AgentClient and AgentClientPool: agents answer from a script, every call recorded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sokovan.errors import AgentUnavailable
from sokovan.types import (
    AgentId,
    ImageConfig,
    KernelId,
    SessionId,
)

# A scripted answer: a value, an exception to raise, or a function of the call's args.
Answer = Any


@dataclass
class Call:
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


class FakeAgentClient:
    """An agent that answers from a script and records every call."""

    def __init__(self, agent_id: AgentId, delay: float = 0.0) -> None:
        self.agent_id = agent_id
        self.delay = delay
        self.calls: list[Call] = []
        self.closed = 0
        self._script: dict[tuple[str, Any], Answer] = {}
        self._next_port = 30000

    def script(self, method: str, answer: Answer, key: Any = None) -> None:
        """Sets the answer of `method` (for one kernel id or image when `key` is given)."""
        self._script[(method, key)] = answer

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    async def _answer(self, method: str, key: Any, default: Answer, *args: Any) -> Any:
        if self.delay:
            await asyncio.sleep(self.delay)
        answer = self._script.get((method, key), self._script.get((method, None), default))
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            result = answer(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        return answer

    async def check_and_pull(self, image_configs: Mapping[str, ImageConfig]) -> Mapping[str, str]:
        self.calls.append(Call("check_and_pull", (dict(image_configs),)))
        default = {name: "cached" for name in image_configs}
        return await self._answer("check_and_pull", None, default, image_configs)  # type: ignore[no-any-return]

    async def create_kernels(
        self,
        session_id: SessionId,
        kernel_ids: Sequence[KernelId],
        kernel_configs: Sequence[Mapping[str, Any]],
        cluster_info: Mapping[str, Any],
        kernel_image_refs: Mapping[KernelId, ImageConfig],
    ) -> list[dict[str, Any]]:
        args = (session_id, list(kernel_ids), list(kernel_configs), cluster_info, kernel_image_refs)
        self.calls.append(Call("create_kernels", args))
        default = [{"id": str(k), "container_id": f"c-{k}"} for k in kernel_ids]
        return await self._answer("create_kernels", None, default, *args)  # type: ignore[no-any-return]

    async def destroy_kernel(
        self,
        kernel_id: KernelId,
        session_id: SessionId,
        reason: str,
        suppress_events: bool = False,
    ) -> None:
        self.calls.append(
            Call(
                "destroy_kernel",
                (kernel_id, session_id, reason),
                {"suppress_events": suppress_events},
            )
        )
        await self._answer("destroy_kernel", kernel_id, None, kernel_id)

    async def check_running(self, kernel_id: KernelId) -> bool | None:
        self.calls.append(Call("check_running", (kernel_id,)))
        return await self._answer("check_running", kernel_id, True, kernel_id)  # type: ignore[no-any-return]

    async def health(self) -> Mapping[str, Any]:
        self.calls.append(Call("health", ()))
        default = {"status": "ok", "component": "agent", "agent_id": str(self.agent_id)}
        return await self._answer("health", None, default)  # type: ignore[no-any-return]

    async def create_local_network(self, network_name: str) -> None:
        self.calls.append(Call("create_local_network", (network_name,)))
        await self._answer("create_local_network", network_name, None, network_name)

    async def assign_port(self) -> int:
        self.calls.append(Call("assign_port", ()))
        self._next_port += 1
        return await self._answer("assign_port", None, self._next_port)  # type: ignore[no-any-return]

    async def get_logs(self, kernel_id: KernelId) -> str:
        self.calls.append(Call("get_logs", (kernel_id,)))
        return await self._answer("get_logs", kernel_id, "", kernel_id)  # type: ignore[no-any-return]

    async def close(self) -> None:
        self.closed += 1


class FakeAgentClientPool:
    """Lends FakeAgentClients by id; an unknown id is unavailable."""

    def __init__(self, clients: Mapping[AgentId, FakeAgentClient] | None = None) -> None:
        self.clients: dict[AgentId, FakeAgentClient] = dict(clients or {})
        self.acquired: list[AgentId] = []
        self.closed_all = 0

    def add(self, agent_id: str, delay: float = 0.0) -> FakeAgentClient:
        client = FakeAgentClient(AgentId(agent_id), delay=delay)
        self.clients[AgentId(agent_id)] = client
        return client

    @asynccontextmanager
    async def acquire(self, agent_id: AgentId) -> AsyncIterator[FakeAgentClient]:
        self.acquired.append(agent_id)
        client = self.clients.get(agent_id)
        if client is None:
            raise AgentUnavailable(f"agent {agent_id} is not reachable")
        yield client

    async def close_all(self) -> None:
        self.closed_all += 1
        for client in self.clients.values():
            await client.close()
