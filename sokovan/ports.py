"""Ports: what the domain needs from the outside, as Protocols. Stubs in sokovan/stubs/, one
module per port; the SQL stores reach the domain through the offload adapter (db/)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from sokovan.errors import SokovanError
from sokovan.records import (
    AgentContact,
    AgentRow,
    Leftover,
    Scheduled,
    SessionRequest,
    Submitted,
    SweepRow,
)
from sokovan.types import (
    AgentAddress,
    AgentBatch,
    AgentId,
    AgentLiveness,
    ImageConfig,
    ItemOutcome,
    KernelId,
    KernelInfo,
    KernelMove,
    KernelPresence,
    KernelStatus,
    Operation,
    Recorded,
    RunId,
    RunRecord,
    RunStatus,
    RunTrigger,
    SessionId,
    SessionInfo,
    SessionStatus,
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


class ActivityStore(Protocol):
    """Kernel utilization as agents report it, and sessions' last activity (sokovan.activity)."""

    async def utilization(self, kernel_ids: Collection[KernelId]) -> dict[KernelId, float]:
        """CPU utilization (percent of a core) per kernel; kernels without data are absent."""
        ...

    async def last_activity(self, session_ids: Collection[SessionId]) -> dict[SessionId, datetime]:
        """The newest activity stamp per session; sessions never stamped are absent."""
        ...

    async def touch(self, stamps: Mapping[SessionId, datetime]) -> None:
        """Records activity; a stamp never moves back in time."""
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

    async def hold(self, token: str) -> None:
        """Notes that this worker does a piece of the work of the run under `token`."""
        ...

    async def unhold(self, token: str) -> None:
        """Notes that that piece of work ended (done, failed or given up)."""
        ...

    async def gone_holders(self, token: str, run_id: int | None = None) -> list[str]:
        """The workers that were doing work under `token` (or held batches of `run_id`)
        when they died or restarted."""
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
    """The run ledger as the domain uses it (an offloaded RunLedger in production)."""

    async def is_paused(self, handler: str) -> bool: ...

    async def open_run(
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

    async def update_run(self, run_id: RunId, **values: Any) -> None: ...

    async def record_items(self, run_id: RunId, outcomes: Sequence[ItemOutcome]) -> int: ...

    async def record_and_move(
        self, run_id: RunId, outcomes: Sequence[ItemOutcome], moves: Sequence[KernelMove] = ()
    ) -> Recorded:
        """Records outcomes and applies `moves` in one transaction while the run lives."""
        ...

    async def close_run(
        self,
        run_id: RunId,
        *,
        error: str | None = None,
        note: str | None = None,
        bulk_ok: int = 0,
        held: bool = False,
        partial: bool = False,
    ) -> RunRecord | None: ...

    async def finish_as(self, run_id: RunId, status: RunStatus, note: str) -> bool: ...

    async def recount(self, run_id: RunId) -> None: ...

    async def get_run(self, run_id: RunId) -> RunRecord: ...

    async def running(self, handler: str | None = None) -> list[RunRecord]: ...

    async def outcomes(self, run_id: RunId) -> list[ItemOutcome]: ...

    async def running_past_deadline(self, now: datetime | None = None) -> list[RunRecord]: ...

    async def discard_run(self, run_id: RunId) -> None: ...

    async def prune(self, older_than: datetime) -> int: ...


class SweepPages(Protocol):
    """A sweep's kernels, read a page at a time; close it on every way out."""

    async def next_page(self) -> list[SweepRow] | None:
        """The next page, or None once every kernel was read."""
        ...

    async def close(self) -> None:
        """Releases the read (its connection) early."""
        ...


class SessionStore(Protocol):
    """Sessions and their kernels: reads, and guarded status moves."""

    async def get_session(self, session_id: SessionId) -> SessionInfo:
        """The session; raises NotFound."""
        ...

    async def sessions_by_ids(self, ids: Collection[SessionId]) -> list[SessionInfo]: ...

    async def sessions_in(
        self,
        statuses: Collection[SessionStatus],
        *,
        limit: int = 0,
        only: Collection[SessionId] | None = None,
    ) -> list[SessionInfo]:
        """Sessions in `statuses`, oldest status change first, at most `limit` (0: all)."""
        ...

    async def sessions_to_destroy(
        self,
        statuses: Collection[SessionStatus],
        *,
        limit: int = 0,
        only: Collection[SessionId] | None = None,
    ) -> list[SessionInfo]:
        """Like `sessions_in`, with only what destroying their kernels needs."""
        ...

    async def image_configs(self, names: Iterable[str] | None = None) -> dict[str, ImageConfig]: ...

    async def merge_session_status_data(
        self, session_id: SessionId, data: Mapping[str, Any]
    ) -> None: ...

    async def set_session_deadline(self, session_id: SessionId, when: datetime) -> None: ...

    async def transition_sessions(
        self,
        session_ids: Collection[SessionId],
        to: SessionStatus,
        allowed_from: Collection[SessionStatus],
        *,
        status_info: str | None = None,
    ) -> list[SessionId]:
        """Moves the sessions in `allowed_from` to `to`; returns the ones that moved."""
        ...

    async def transition_kernels(
        self,
        kernel_ids: Collection[KernelId],
        to: KernelStatus,
        allowed_from: Collection[KernelStatus],
        *,
        status_info: str | None = None,
        values: Mapping[KernelId, Mapping[str, Any]] | None = None,
    ) -> list[KernelId]:
        """Moves the kernels in `allowed_from` to `to`; returns the ones that moved."""
        ...

    async def kernel_statuses_by_session(
        self, session_ids: Collection[SessionId]
    ) -> dict[SessionId, list[KernelStatus]]: ...

    async def kernel_statuses(
        self, kernel_ids: Collection[KernelId]
    ) -> dict[KernelId, KernelStatus]: ...

    async def finish_sessions(self, session_ids: Collection[SessionId]) -> list[SessionId]:
        """Moves TERMINATING sessions whose kernels are all terminal to TERMINATED."""
        ...

    async def note_kernel_attempts(
        self,
        errors: Mapping[KernelId, str],
        *,
        base: float,
        cap: float,
        now: datetime | None = None,
    ) -> dict[KernelId, int]:
        """Counts one more failed try per kernel; returns each kernel's count."""
        ...

    async def kernels_to_sweep(
        self,
        statuses: Collection[KernelStatus],
        *,
        limit: int = 0,
        only: Collection[KernelId] | None = None,
    ) -> list[KernelInfo]: ...

    def sweep_pages(
        self,
        statuses: Collection[KernelStatus],
        *,
        page_size: int,
        limit: int = 0,
        only: Collection[KernelId] | None = None,
    ) -> SweepPages:
        """Kernels to sweep as plain rows, a page at a time; nothing is read before the first."""
        ...

    async def sweep_ids_on_agents(
        self,
        statuses: Collection[KernelStatus],
        agent_ids: Collection[AgentId],
        *,
        only: Collection[KernelId] | None = None,
    ) -> list[str]:
        """Ids of the kernels to sweep that these agents host, as `sweep_pages` gives them."""
        ...

    async def cancel_pending(
        self, session_ids: Collection[SessionId], reason: str
    ) -> list[SessionId]:
        """Cancels the sessions still PENDING; returns them (one placed meanwhile is not)."""
        ...

    async def pending_count(self) -> int: ...


class SecretBinder(Protocol):
    """Binds a request's secret variables to its session, encrypted in its transaction."""

    def bind(
        self, session_id: SessionId, environ: Mapping[str, str], conn: Any = None
    ) -> dict[str, str]:
        """Stores the secrets encrypted (in `conn`'s transaction); returns the clear ones."""
        ...


class SessionQueue(Protocol):
    """Submissions placed on agents or queued, and the queue placed as room frees."""

    async def submit_session(
        self, request: SessionRequest, secrets: SecretBinder | None = None
    ) -> Submitted:
        """Places and stores a session (PENDING if it must wait); raises on refusal."""
        ...

    async def submit_sessions(
        self, requests: Sequence[SessionRequest], secrets: SecretBinder | None = None
    ) -> list[Submitted | SokovanError]:
        """Places and stores each request; a refused one gets its error in its place."""
        ...

    async def schedule_pending(self, budget: int = 0) -> Scheduled:
        """Places PENDING sessions oldest first, per scaling group, while the head fits."""
        ...


class AgentStore(Protocol):
    """Registered agents, their liveness and the kernels they hold."""

    async def upsert_agent(self, agent: AgentRow, *, keep_status: bool = False) -> None: ...

    async def list_agents(self, scaling_group: str | None = None) -> list[AgentRow]: ...

    async def record_instance(
        self,
        agent_id: AgentId,
        instance_id: str | None,
        now: datetime,
        started_at: datetime | None = None,
    ) -> None:
        """An agent's instance marker; a new one is a restart, since `started_at` (else now)."""
        ...

    async def record_contact(
        self,
        agent_id: AgentId,
        instance_id: str | None,
        now: datetime,
        started_at: datetime | None = None,
    ) -> None: ...

    async def agents_restarted_since(self, since: datetime) -> dict[AgentId, datetime]:
        """Agents whose current instance started at `since` or later, with that start."""
        ...

    async def agent_contacts(self) -> list[AgentContact]: ...

    async def mark_liveness(
        self, agent_ids: Collection[AgentId], status: AgentLiveness, now: datetime
    ) -> None: ...

    async def agent_states(self, agent_ids: Collection[AgentId]) -> dict[AgentId, tuple[str, Any]]:
        """Liveness and its last change per agent; unknown agents are left out."""
        ...

    async def live_kernel_infos(self, agent_ids: Collection[AgentId]) -> list[KernelInfo]:
        """Non-terminal kernels on these agents."""
        ...


class MaintenanceStore(Protocol):
    """Agents cordoned or drained for maintenance, and what still runs on them."""

    async def cordon_agent(self, agent_id: AgentId) -> AgentRow:
        """Stops placements on the agent; raises UnknownAgent."""
        ...

    async def uncordon_agent(self, agent_id: AgentId) -> AgentRow:
        """Lets placement use the agent again and ends any drain; raises UnknownAgent."""
        ...

    async def start_drain(self, agent_id: AgentId, mode: str, deadline: datetime) -> AgentRow:
        """Cordons the agent and records the drain; raises UnknownAgent."""
        ...

    async def draining_agents(self) -> list[AgentRow]: ...

    async def finish_drain(self, agent_id: AgentId) -> bool:
        """Marks the drain done if no live kernel is left on the agent."""
        ...

    async def sessions_on_agent(self, agent_id: AgentId) -> dict[SessionId, SessionStatus]:
        """Sessions with a live kernel on the agent, and their statuses."""
        ...

    async def bring_deadlines_forward(
        self, session_ids: Collection[SessionId], when: datetime
    ) -> int:
        """Sessions' deadlines no later than `when`; returns how many changed."""
        ...


class LeftoverStore(Protocol):
    """Kernels given up on whose containers may still exist on their agents."""

    async def remember_leftovers(self, items: Sequence[Leftover], reopen: bool = False) -> int:
        """Records kernels given up on; one already remembered is kept as it was, or with
        `reopen` is due again (its container was created after its kernel ended)."""
        ...

    async def leftovers(self, kernel_ids: Collection[KernelId] | None = None) -> list[Leftover]: ...

    async def leftovers_due(self, now: datetime | None = None, limit: int = 0) -> list[Leftover]:
        """Leftovers whose next destroy attempt is due, oldest first."""
        ...

    async def leftovers_destroyed(self, kernel_ids: Collection[KernelId]) -> None: ...

    async def leftovers_failed(
        self, errors: Mapping[KernelId, str], *, base: float, cap: float
    ) -> None: ...


class ReclaimPolicyStore(Protocol):
    """Reclaim policies an operator set per scaling group (`sokovan reclaim set`)."""

    async def stored_reclaim_policies(self) -> dict[str, str]:
        """Scaling group -> its policy's JSON object, for every group set."""
        ...


class SchedulerStore(
    SessionStore,
    SessionQueue,
    AgentStore,
    MaintenanceStore,
    LeftoverStore,
    SessionRecorder,
    ReclaimPolicyStore,
    Protocol,
):
    """Everything the scheduler's handlers read and write in the database."""


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
