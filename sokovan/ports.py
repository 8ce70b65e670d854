"""Ports: what the domain needs from the outside, as Protocols. Fakes in sokovan/testing.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from sokovan.types import (
    AgentAddress,
    AgentBatch,
    AgentId,
    ImageConfig,
    ItemOutcome,
    KernelId,
    KernelPresence,
    Operation,
    RunId,
    SessionId,
)


class AgentClient(Protocol):
    """The agent RPC methods the scheduler calls (Backend.AI agent names and shapes)."""

    async def check_and_pull(self, image_configs: Mapping[str, ImageConfig]) -> Mapping[str, str]:
        """Asks the agent to pull images it lacks; returns canonical -> its answer."""
        ...

    async def create_kernels(
        self,
        session_id: SessionId,
        kernel_ids: Sequence[KernelId],
        kernel_configs: Sequence[Mapping[str, Any]],
        cluster_info: Mapping[str, Any],
        kernel_image_refs: Mapping[KernelId, ImageConfig],
    ) -> list[dict[str, Any]]:
        """Creates kernels; returns one creation-info mapping per kernel."""
        ...

    async def destroy_kernel(
        self,
        kernel_id: KernelId,
        session_id: SessionId,
        reason: str,
        suppress_events: bool = False,
    ) -> None:
        """Destroys a kernel; destroying an absent kernel succeeds."""
        ...

    async def check_running(self, kernel_id: KernelId) -> bool | None:
        """Whether the kernel runs; None when the agent cannot tell."""
        ...

    async def create_local_network(self, network_name: str) -> None: ...

    async def assign_port(self) -> int: ...


class AgentClientPool(Protocol):
    """Hands out connected clients by agent id."""

    def acquire(self, agent_id: AgentId) -> AbstractAsyncContextManager[AgentClient]:
        """Lends a client for one agent; raises AgentError when it cannot be reached."""
        ...

    async def close_all(self) -> None:
        """Closes every cached client, idle or in use."""
        ...


class PresenceReader(Protocol):
    """Stage 1 of the sweep: kernel presence in Valkey."""

    async def check_kernel_presence_status_batch(
        self, kernel_ids: Sequence[KernelId], agent_ids: Sequence[AgentId | None] | None = None
    ) -> dict[KernelId, KernelPresence]:
        """Presence per kernel; a kernel with no presence field is absent from the result."""
        ...


class FanOut(Protocol):
    """Runs one task per agent batch and completes the run when all have answered."""

    async def dispatch(
        self,
        run_id: RunId,
        operation: Operation,
        batches: Sequence[AgentBatch],
        skipped: Sequence[ItemOutcome] = (),
    ) -> str:
        """Runs one task per batch, then completes the run with their outcomes and `skipped`.

        Returns the fan-out's id; raises DispatchError when it cannot be handed over.
        """
        ...


class NetworkPlugin(Protocol):
    """Creates inter-container networks that span agents (overlay and the like)."""

    async def create_network(self, identifier: str) -> Mapping[str, Any]:
        """Creates a network; returns {"network_id": ..., "options": {...}}."""
        ...

    async def destroy_network(self, network_id: str) -> None: ...


class AgentDirectory(Protocol):
    """Where an agent listens, from the registered agents."""

    async def resolve(self, agent_id: AgentId) -> AgentAddress:
        """The agent's RPC address; raises UnknownAgent for an unregistered id."""
        ...


class SessionRecorder(Protocol):
    """What the launcher writes about a session."""

    async def update_session_network_id(
        self, session_id: SessionId, network_id: str | None
    ) -> None:
        """Stores the session's network id; None when the session has no network of its own."""
        ...

    async def update_session_error_info(
        self, session_id: SessionId, error_info: Mapping[str, Any]
    ) -> None:
        """Stores why a session failed to start (status_data["error"])."""
        ...


class SecretStore(Protocol):
    """Keeps secrets out of task messages: the launcher stores, the worker task resolves."""

    async def put_ssh_keypair(
        self, session_id: SessionId, private_key: str, public_key: str
    ) -> None: ...

    async def get_ssh_keypair(self, session_id: SessionId) -> tuple[str, str]:
        """Returns (private_key, public_key); raises NotFound."""
        ...
