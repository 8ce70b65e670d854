"""The async ports over the synchronous SQL stores: every call runs in a worker thread.

This is the one place where the domain's event loop hands blocking work to a thread (the
name says what it does: the SQL calls are offloaded). The stores themselves stay
synchronous, so the CLI, the metrics exporter and tests call them directly; the domain only
awaits the ports these adapters implement. `offload` keeps each method's signature, so
mypy checks the adapters against the ports exactly.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection, Coroutine, Generator, Mapping, Sequence
from typing import Any, Generic, ParamSpec, TypeVar

from sokovan.db.keypool import SqlKeypairPool
from sokovan.db.ledger import RunLedger
from sokovan.db.repository import SchedulerRepository
from sokovan.db.secret_environ import SqlSecretEnviron
from sokovan.db.secrets import SqlSecretStore
from sokovan.errors import SokovanError, UnknownAgent
from sokovan.ports import SecretBinder
from sokovan.records import Scheduled, SessionRequest, Submitted, SweepRow
from sokovan.scheduler.pending import schedule_pending
from sokovan.scheduler.submit import submit_session
from sokovan.scheduler.submit_batch import submit_sessions
from sokovan.types import (
    AgentAddress,
    AgentId,
    KernelId,
    KernelStatus,
    SessionId,
)

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

__all__ = [
    "OffloadedKeypairPool",
    "OffloadedLedger",
    "OffloadedSecretEnviron",
    "OffloadedSecrets",
    "OffloadedStore",
    "offload",
]


def offload(fn: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """`fn` as a coroutine function that runs it in a worker thread."""

    @functools.wraps(fn)
    async def offloaded(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(fn, *args, **kwargs)

    return offloaded


class Coalesced(Generic[T, R]):
    """One item per call, handled in batches: calls made while a batch is queued or under way
    go together into the next one, so a burst of per-session writes costs a few transactions
    instead of one each, and a task's connections to 64 agents one address query. Each call
    returns its own item's result once its batch is done (`handle` returns one per item, or
    None for writes), and raises what that batch raised."""

    def __init__(self, handle: Callable[[list[T]], Sequence[R] | None]) -> None:
        self._handle = handle
        self._queued: list[tuple[T, asyncio.Future[R | None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, item: T) -> R | None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests, the CLI): nothing of the old one is kept
            self._loop, self._queued, self._flusher = loop, [], None
        done: asyncio.Future[R | None] = loop.create_future()
        self._queued.append((item, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await done

    async def _flush(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                results = await asyncio.to_thread(self._handle, [item for item, _ in batch])
            except Exception as e:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(e)
                continue
            except BaseException:  # cancelled with its loop: no caller is left waiting
                for _, done in batch + self._queued:
                    done.cancel()
                raise
            for position, (_, done) in enumerate(batch):
                if not done.done():
                    done.set_result(None if results is None else results[position])


class OffloadedLedger:
    """Ledger port over the run ledger."""

    def __init__(self, ledger: RunLedger) -> None:
        self.sync = ledger
        self.is_paused = offload(ledger.is_paused)
        self.open_run = offload(ledger.open_run)
        self.update_run = offload(ledger.update_run)
        self.record_items = offload(ledger.record_items)
        self.record_and_move = offload(ledger.record_and_move)
        self.close_run = offload(ledger.close_run)
        self.finish_as = offload(ledger.finish_as)
        self.recount = offload(ledger.recount)
        self.get_run = offload(ledger.get_run)
        self.running = offload(ledger.running)
        self.outcomes = offload(ledger.outcomes)
        self.running_past_deadline = offload(ledger.running_past_deadline)
        self.discard_run = offload(ledger.discard_run)
        self.prune = offload(ledger.prune)


class OffloadedSweepPages:
    """SweepPages over the repository's page generator: each page is read in a thread."""

    def __init__(self, pages: Generator[list[SweepRow]]) -> None:
        self._pages = pages

    async def next_page(self) -> list[SweepRow] | None:
        return await asyncio.to_thread(next, self._pages, None)

    async def close(self) -> None:
        await asyncio.to_thread(self._pages.close)


class OffloadedStore:
    """SchedulerStore and AgentDirectory ports over the repository."""

    def __init__(self, repository: SchedulerRepository) -> None:
        r = self.sync = repository
        # Sessions and kernels.
        self.get_session = offload(r.get_session)
        self.sessions_by_ids = offload(r.sessions_by_ids)
        self.sessions_in = offload(r.sessions_in)
        self.sessions_to_destroy = offload(r.sessions_to_destroy)
        self.image_configs = offload(r.image_configs)
        self._status_data: Coalesced[tuple[SessionId, Mapping[str, Any]], None]
        self._status_data = Coalesced(r.merge_sessions_status_data)
        self._network_ids: Coalesced[tuple[SessionId, str | None], None]
        self._network_ids = Coalesced(r.set_sessions_network_ids)
        self._agents = Coalesced(r.agents_by_ids)
        self.set_session_deadline = offload(r.set_session_deadline)
        self.transition_sessions = offload(r.transition_sessions)
        self.transition_kernels = offload(r.transition_kernels)
        self.kernel_statuses_by_session = offload(r.kernel_statuses_by_session)
        self.kernel_statuses = offload(r.kernel_statuses)
        self.finish_sessions = offload(r.finish_sessions)
        self.note_kernel_attempts = offload(r.note_kernel_attempts)
        self.kernels_to_sweep = offload(r.kernels_to_sweep)
        self.sweep_ids_on_agents = offload(r.sweep_ids_on_agents)
        self.cancel_pending = offload(r.cancel_pending)
        self.pending_count = offload(r.pending_count)
        # Agents.
        self.upsert_agent = offload(r.upsert_agent)
        self.list_agents = offload(r.list_agents)
        self.record_instance = offload(r.record_instance)
        self.record_contact = offload(r.record_contact)
        self.agents_restarted_since = offload(r.agents_restarted_since)
        self.agent_contacts = offload(r.agent_contacts)
        self.mark_liveness = offload(r.mark_liveness)
        self.agent_states = offload(r.agent_states)
        self.live_kernel_infos = offload(r.live_kernel_infos)
        # Maintenance.
        self.cordon_agent = offload(r.cordon_agent)
        self.uncordon_agent = offload(r.uncordon_agent)
        self.start_drain = offload(r.start_drain)
        self.draining_agents = offload(r.draining_agents)
        self.finish_drain = offload(r.finish_drain)
        self.stored_reclaim_policies = offload(r.stored_reclaim_policies)
        self.sessions_on_agent = offload(r.sessions_on_agent)
        self.bring_deadlines_forward = offload(r.bring_deadlines_forward)
        # Leftover kernels.
        self.remember_leftovers = offload(r.remember_leftovers)
        self.leftovers = offload(r.leftovers)
        self.leftovers_due = offload(r.leftovers_due)
        self.leftovers_destroyed = offload(r.leftovers_destroyed)
        self.leftovers_failed = offload(r.leftovers_failed)

    def sweep_pages(
        self,
        statuses: Collection[KernelStatus],
        *,
        page_size: int,
        limit: int = 0,
        only: Collection[KernelId] | None = None,
    ) -> OffloadedSweepPages:
        """SessionStore: nothing is read until the first page is asked for."""
        pages = self.sync.sweep_pages(statuses, page_size=page_size, limit=limit, only=only)
        return OffloadedSweepPages(pages)

    async def submit_session(
        self, request: SessionRequest, secrets: SecretBinder | None = None
    ) -> Submitted:
        """SessionQueue: placement and storage in one transaction."""
        return await asyncio.to_thread(submit_session, self.sync, request, secrets)

    async def submit_sessions(
        self, requests: Sequence[SessionRequest], secrets: SecretBinder | None = None
    ) -> list[Submitted | SokovanError]:
        """SessionQueue: one placement transaction per scaling group."""
        return await asyncio.to_thread(submit_sessions, self.sync, requests, secrets)

    async def schedule_pending(self, budget: int = 0) -> Scheduled:
        """SessionQueue: one placement pass over the PENDING queue."""
        return await asyncio.to_thread(schedule_pending, self.sync, budget)

    async def merge_session_status_data(
        self, session_id: SessionId, data: Mapping[str, Any]
    ) -> None:
        """SessionStore: merged with the other sessions' merges of the moment, in one write."""
        await self._status_data((session_id, data))

    async def update_session_network_id(
        self, session_id: SessionId, network_id: str | None
    ) -> None:
        """SessionRecorder port: written with the other sessions' ids of the moment."""
        await self._network_ids((session_id, network_id))

    async def update_session_error_info(
        self, session_id: SessionId, error_info: Mapping[str, Any]
    ) -> None:
        """SessionRecorder port: keeps the error under status_data["error"]."""
        await self._status_data((session_id, {"error": dict(error_info)}))

    async def resolve(self, agent_id: AgentId) -> AgentAddress:
        """AgentDirectory port: where the agent listens."""
        row = await self._agents(agent_id)
        if row is None:
            raise UnknownAgent(f"agent {agent_id!r} is not registered")
        return AgentAddress(agent_id=row.id, rpc_addr=row.rpc_addr, public_key=row.public_key)


class OffloadedSecrets:
    """SecretStore port over the encrypted keypair table."""

    def __init__(self, store: SqlSecretStore) -> None:
        self.sync = store
        self.put_ssh_keypair = offload(store.put_ssh_keypair)
        self.get_ssh_keypair = offload(store.get_ssh_keypair)


class OffloadedSecretEnviron:
    """SecretEnvironStore port over the encrypted environ table."""

    def __init__(self, store: SqlSecretEnviron) -> None:
        self.sync = store
        self.get_secret_environs = offload(store.environs)


class OffloadedKeypairPool:
    """KeypairPool port over the pooled keypair table."""

    def __init__(self, pool: SqlKeypairPool) -> None:
        self.sync = pool
        self.take = offload(pool.take)
        self.add = offload(pool.add)
        self.count = offload(pool.count)
        self.launching = offload(pool.launching)
