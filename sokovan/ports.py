"""Ports: what the domain needs from the outside, as Protocols. Fakes in sokovan/testing.py."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from sokovan.types import (
    AgentAddress,
    AgentBatch,
    AgentId,
    ImageConfig,
    ItemOutcome,
    KernelId,
    KernelMove,
    KernelPresence,
    Operation,
    Recorded,
    RunId,
    RunRecord,
    RunStatus,
    RunTrigger,
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

    async def health(self) -> Mapping[str, Any]:
        """The agent's report about itself (a reference agent adds its id and instance)."""
        ...

    async def create_local_network(self, network_name: str) -> None: ...

    async def assign_port(self) -> int: ...

    async def get_logs(self, kernel_id: KernelId) -> str:
        """The kernel's logs (stdout and stderr) as the agent keeps them, cut to a bound."""
        ...


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

    async def scan_for_suspects(
        self, kernel_ids: Sequence[str], agent_ids: Collection[AgentId] = ()
    ) -> dict[int, KernelPresence | None]:
        """Positions in `kernel_ids` (database text) of kernels with presence missing (None)
        or STALE, each with its verdict; stamps the agents' last check like a batch read."""
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


class HandlerKicker(Protocol):
    """Starts a handler run soon (a Celery task in production)."""

    async def kick(
        self, handler: str, trigger: RunTrigger, scope: Sequence[str] | None
    ) -> None: ...


class Claims(Protocol):
    """One run per handler at a time: claims with a lifetime, proven by a token."""

    async def claim(self, lock_id: str, lifetime: float) -> str | None:
        """Takes the claim and returns its token, or None when someone holds it."""
        ...

    async def release(self, lock_id: str, token: str) -> bool:
        """Frees the claim if `token` still holds it."""
        ...

    async def renew(self, lock_id: str, token: str, lifetime: float) -> bool:
        """Extends the lease if `token` still holds it; False once it lapsed."""
        ...

    async def holder(self, lock_id: str) -> str | None: ...

    async def mark_pending(self, lock_id: str, lifetime: float) -> None:
        """Notes that a start was turned away, so the holder re-runs when it finishes."""
        ...

    async def take_pending(self, lock_id: str) -> bool:
        """Clears and returns the pending note."""
        ...


class FanOutTracking(Protocol):
    """Counts a run's fan-outs so the run closes once planning is over and all reported."""

    async def dispatched(self, run_id: RunId, by: int = 1) -> None: ...

    async def completed(self, run_id: RunId) -> bool:
        """A fan-out reported; True when the run is now complete."""
        ...

    async def planned(self, run_id: RunId) -> bool:
        """Planning is over; True when every fan-out has already reported."""
        ...


class Ledger(Protocol):
    """The run ledger as the coordinator uses it (sokovan.db.ledger.RunLedger in production)."""

    def is_paused(self, handler: str) -> bool: ...

    def open_run(
        self,
        handler: str,
        trigger: RunTrigger | str,
        *,
        requested: int = 0,
        scope: Any = None,
        claim_token: str | None = None,
        deadline_sec: float | None = None,
        status: RunStatus = RunStatus.RUNNING,
        note: str | None = None,
        operation: str | None = None,
    ) -> RunId: ...

    def update_run(self, run_id: RunId, **values: Any) -> None: ...

    def record_items(self, run_id: RunId, outcomes: Sequence[ItemOutcome]) -> int: ...

    def record_and_move(
        self, run_id: RunId, outcomes: Sequence[ItemOutcome], moves: Sequence[KernelMove] = ()
    ) -> Recorded: ...

    def close_run(
        self,
        run_id: RunId,
        *,
        error: str | None = None,
        note: str | None = None,
        bulk_ok: int = 0,
        held: bool = False,
        partial: bool = False,
    ) -> RunRecord | None: ...

    def finish_as(self, run_id: RunId, status: RunStatus, note: str) -> bool: ...

    def recount(self, run_id: RunId) -> None: ...

    def get_run(self, run_id: RunId) -> RunRecord: ...

    def running(self, handler: str | None = None) -> list[RunRecord]: ...

    def outcomes(self, run_id: RunId) -> list[ItemOutcome]: ...

    def running_past_deadline(self, now: datetime | None = None) -> list[RunRecord]: ...

    def discard_run(self, run_id: RunId) -> None: ...

    def prune(self, older_than: datetime) -> int: ...


class SecretEnvironStore(Protocol):
    """Secret environ values at rest; only the worker that calls the agent reads them."""

    async def get_secret_environs(
        self, session_ids: Collection[SessionId]
    ) -> dict[SessionId, dict[str, str]]:
        """Each session's secret environ, decrypted; sessions without secrets are absent."""
        ...


class KernelEnvirons(Protocol):
    """Resolves kernels' environments inside the worker, so no task message carries one."""

    async def kernel_environs(
        self, images: Mapping[SessionId, Mapping[KernelId, ImageConfig]]
    ) -> dict[SessionId, dict[KernelId, dict[str, str]]]:
        """Each kernel's full environ per session; a session not found is absent."""
        ...


class KeypairPool(Protocol):
    """Cluster keypairs made ahead of demand; each one is handed out once."""

    async def take(self, count: int, key_type: str) -> list[tuple[str, str]]:
        """Up to `count` (private_key, public_key) pairs, removed as they are taken."""
        ...

    async def add(self, pairs: Sequence[tuple[str, str]], key_type: str) -> None: ...

    async def count(self, key_type: str) -> int: ...

    async def launching(self, limit: int) -> int:
        """Sessions on their way to RUNNING, counted up to `limit`."""
        ...


class KeypairRefiller(Protocol):
    """Asks for the keypair pool to be refilled soon (a worker task in production)."""

    async def request_refill(self) -> None: ...
