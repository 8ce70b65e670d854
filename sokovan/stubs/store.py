"""The SchedulerStore port in memory, for unit tests of the coordinator and handlers.

Sessions, kernels, agents and leftovers live in dicts; status moves are guarded as the SQL
ones are (only from the allowed statuses). It stands in for `sokovan.db.offload`'s
OffloadedStore and holds no SQL semantics beyond that: placement is scripted
(`placements`, `scheduled`), not computed.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sokovan.db.attempts import backoff_seconds
from sokovan.errors import NotFound, SokovanError, UnknownAgent
from sokovan.ports import SecretBinder
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
    TERMINAL_KERNEL_STATUSES,
    AgentId,
    AgentLiveness,
    ImageConfig,
    KernelId,
    KernelInfo,
    KernelStatus,
    SessionId,
    SessionInfo,
    SessionStatus,
    utcnow,
)

# Sorts sessions that never changed status first, as SQL sorts their NULL.
_LONG_AGO = datetime.min.replace(tzinfo=UTC)


class InMemoryStore:
    """Every SchedulerStore method over dicts; records the kernel moves it made."""

    def __init__(self) -> None:
        self.sessions: dict[SessionId, SessionInfo] = {}  # kept without their kernels
        self.kernels: dict[KernelId, KernelInfo] = {}
        self.kernel_values: dict[KernelId, dict[str, Any]] = {}  # columns a move wrote
        self.images: dict[str, ImageConfig] = {}
        self.agents: dict[AgentId, AgentRow] = {}
        self.contacts: dict[AgentId, AgentContact] = {}
        # When each agent's current instance started, once a second instance was seen.
        self.instance_since: dict[AgentId, datetime] = {}
        self.leftover_rows: dict[KernelId, Leftover] = {}
        self.kernel_moves: list[tuple[list[KernelId], KernelStatus]] = []
        self.scheduled = Scheduled()  # what the next schedule_pending returns
        self.submitted: list[SessionRequest] = []
        # Reclaim policies set per scaling group, as JSON objects (`sokovan reclaim set`).
        self.reclaim_policies: dict[str, str] = {}

    def add_session(self, session: SessionInfo) -> SessionInfo:
        """Stores a session with its kernels, as a test's given state."""
        self.sessions[session.id] = dataclasses.replace(session, kernels=())
        for k in session.kernels:
            self.kernels[k.id] = dataclasses.replace(k, session_id=session.id)
        return self._with_kernels(session.id)

    def _with_kernels(self, sid: SessionId) -> SessionInfo:
        mine = sorted(
            (k for k in self.kernels.values() if k.session_id == sid), key=lambda k: k.cluster_idx
        )
        return dataclasses.replace(self.sessions[sid], kernels=tuple(mine))

    def move_kernels(
        self,
        kernel_ids: Collection[KernelId],
        to: KernelStatus,
        allowed_from: Collection[KernelStatus],
        *,
        status_info: str | None = None,
        values: Mapping[KernelId, Mapping[str, Any]] | None = None,
    ) -> list[KernelId]:
        """The guarded kernel move, callable from the in-memory ledger's recording too."""
        allowed = set(allowed_from)
        moved = [k for k in kernel_ids if k in self.kernels and self.kernels[k].status in allowed]
        for k in moved:
            self.kernels[k] = dataclasses.replace(self.kernels[k], status=to)
            self.kernel_values.setdefault(k, {}).update((values or {}).get(k, {}))
            if status_info is not None:
                self.kernel_values[k]["status_info"] = status_info
        self.kernel_moves.append((moved, to))
        return moved

    # SessionStore.

    async def get_session(self, session_id: SessionId) -> SessionInfo:
        if session_id not in self.sessions:
            raise NotFound(f"no session with id {session_id}")
        return self._with_kernels(session_id)

    async def sessions_by_ids(self, ids: Collection[SessionId]) -> list[SessionInfo]:
        return [self._with_kernels(s) for s in ids if s in self.sessions]

    async def sessions_in(
        self,
        statuses: Collection[SessionStatus],
        *,
        limit: int = 0,
        only: Collection[SessionId] | None = None,
    ) -> list[SessionInfo]:
        found = [
            s
            for s in self.sessions.values()
            if s.status in statuses and (only is None or s.id in only)
        ]
        found.sort(key=lambda s: (s.status_changed_at or _LONG_AGO, s.id))
        return [self._with_kernels(s.id) for s in (found[:limit] if limit else found)]

    sessions_to_destroy = sessions_in

    async def image_configs(self, names: Iterable[str] | None = None) -> dict[str, ImageConfig]:
        wanted = self.images if names is None else names
        return {n: self.images[n] for n in wanted if n in self.images}

    async def merge_session_status_data(
        self, session_id: SessionId, data: Mapping[str, Any]
    ) -> None:
        s = self.sessions[session_id]
        self.sessions[session_id] = dataclasses.replace(s, status_data={**s.status_data, **data})

    async def set_session_deadline(self, session_id: SessionId, when: datetime) -> None:
        await self.merge_session_status_data(session_id, {"deadline_at": when.isoformat()})

    async def transition_sessions(
        self,
        session_ids: Collection[SessionId],
        to: SessionStatus,
        allowed_from: Collection[SessionStatus],
        *,
        status_info: str | None = None,
    ) -> list[SessionId]:
        moved = [
            s for s in session_ids if s in self.sessions and self.sessions[s].status in allowed_from
        ]
        for sid in moved:
            info = self.sessions[sid].status_info if status_info is None else status_info
            self.sessions[sid] = dataclasses.replace(
                self.sessions[sid], status=to, status_info=info, status_changed_at=utcnow()
            )
        return moved

    async def transition_kernels(
        self,
        kernel_ids: Collection[KernelId],
        to: KernelStatus,
        allowed_from: Collection[KernelStatus],
        *,
        status_info: str | None = None,
        values: Mapping[KernelId, Mapping[str, Any]] | None = None,
    ) -> list[KernelId]:
        return self.move_kernels(
            kernel_ids, to, allowed_from, status_info=status_info, values=values
        )

    async def kernel_statuses_by_session(
        self, session_ids: Collection[SessionId]
    ) -> dict[SessionId, list[KernelStatus]]:
        out: dict[SessionId, list[KernelStatus]] = {}
        for k in self.kernels.values():
            if k.session_id in session_ids:
                out.setdefault(k.session_id, []).append(k.status)
        return out

    async def kernel_statuses(
        self, kernel_ids: Collection[KernelId]
    ) -> dict[KernelId, KernelStatus]:
        return {k: self.kernels[k].status for k in kernel_ids if k in self.kernels}

    async def finish_sessions(self, session_ids: Collection[SessionId]) -> list[SessionId]:
        done = [
            sid
            for sid in session_ids
            if sid in self.sessions
            and self.sessions[sid].status == SessionStatus.TERMINATING
            and all(k.status in TERMINAL_KERNEL_STATUSES for k in self._with_kernels(sid).kernels)
        ]
        terminating = [SessionStatus.TERMINATING]
        return await self.transition_sessions(done, SessionStatus.TERMINATED, terminating)

    async def note_kernel_attempts(
        self,
        errors: Mapping[KernelId, str],
        *,
        base: float,
        cap: float,
        now: datetime | None = None,
    ) -> dict[KernelId, int]:
        now = now or utcnow()
        counts: dict[KernelId, int] = {}
        for kid, error in errors.items():
            k = self.kernels[kid]
            n = int(k.status_data.get("attempts") or 0) + 1
            due = now + timedelta(seconds=backoff_seconds(n, base, cap))
            data = {"attempts": n, "next_attempt_at": due.isoformat(), "last_error": error}
            self.kernels[kid] = dataclasses.replace(k, status_data={**k.status_data, **data})
            counts[kid] = n
        return counts

    async def kernels_to_sweep(
        self,
        statuses: Collection[KernelStatus],
        *,
        limit: int = 0,
        only: Collection[KernelId] | None = None,
    ) -> list[KernelInfo]:
        found = [
            k
            for k in self.kernels.values()
            if k.status in statuses and (only is None or k.id in only)
        ]
        return found[:limit] if limit else found

    def sweep_pages(
        self,
        statuses: Collection[KernelStatus],
        *,
        page_size: int,
        limit: int = 0,
        only: Collection[KernelId] | None = None,
    ) -> ListedPages:
        rows: list[SweepRow] = [
            (str(k.id), k.agent_id, k.scaling_group)
            for k in self.kernels.values()
            if k.status in statuses and (only is None or k.id in only)
        ]
        rows = rows[:limit] if limit else rows
        return ListedPages([rows[i : i + page_size] for i in range(0, len(rows), page_size)])

    async def sweep_ids_on_agents(
        self,
        statuses: Collection[KernelStatus],
        agent_ids: Collection[AgentId],
        *,
        only: Collection[KernelId] | None = None,
    ) -> list[str]:
        return [
            str(k.id)
            for k in self.kernels.values()
            if k.status in statuses and k.agent_id in agent_ids and (only is None or k.id in only)
        ]

    async def cancel_pending(
        self, session_ids: Collection[SessionId], reason: str
    ) -> list[SessionId]:
        return await self.transition_sessions(
            list(dict.fromkeys(session_ids)),
            SessionStatus.CANCELLED,
            [SessionStatus.PENDING],
            status_info=reason,
        )

    async def pending_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.status == SessionStatus.PENDING)

    # SessionQueue: nothing is placed; every submission waits PENDING.

    async def submit_session(
        self, request: SessionRequest, secrets: SecretBinder | None = None
    ) -> Submitted:
        self.submitted.append(request)
        sid = SessionId(uuid.uuid4())
        kernels = tuple(
            KernelInfo(KernelId(uuid.uuid4()), sid, None, KernelStatus.PENDING, image=request.image)
            for _ in range(request.kernels)
        )
        self.add_session(SessionInfo(sid, kernels, status=SessionStatus.PENDING))
        return Submitted(sid, SessionStatus.PENDING, await self.pending_count())

    async def submit_sessions(
        self, requests: Sequence[SessionRequest], secrets: SecretBinder | None = None
    ) -> list[Submitted | SokovanError]:
        return [await self.submit_session(r, secrets) for r in requests]

    async def schedule_pending(self, budget: int = 0) -> Scheduled:
        scheduled, self.scheduled = self.scheduled, Scheduled()
        return scheduled

    # SessionRecorder.

    async def update_session_network_id(
        self, session_id: SessionId, network_id: str | None
    ) -> None:
        s = self.sessions[session_id]
        self.sessions[session_id] = dataclasses.replace(s, network_id=network_id)

    async def update_session_error_info(
        self, session_id: SessionId, error_info: Mapping[str, Any]
    ) -> None:
        await self.merge_session_status_data(session_id, {"error": dict(error_info)})

    # AgentStore.

    async def upsert_agent(self, agent: AgentRow, *, keep_status: bool = False) -> None:
        known = self.agents.get(agent.id)
        if keep_status and known is not None:
            agent = dataclasses.replace(agent, status=known.status)
        self.agents[agent.id] = agent

    async def list_agents(self, scaling_group: str | None = None) -> list[AgentRow]:
        return [a for a in self.agents.values() if scaling_group in (None, a.scaling_group)]

    async def record_instance(
        self,
        agent_id: AgentId,
        instance_id: str | None,
        now: datetime,
        started_at: datetime | None = None,
    ) -> None:
        contact = self.contacts.get(agent_id) or AgentContact(agent_id, AgentLiveness.ALIVE, now)
        self._note_instance(contact.instance_id, instance_id, agent_id, now, started_at)
        kept = contact.instance_id if instance_id is None else instance_id
        self.contacts[agent_id] = dataclasses.replace(contact, instance_id=kept)

    async def record_contact(
        self,
        agent_id: AgentId,
        instance_id: str | None,
        now: datetime,
        started_at: datetime | None = None,
    ) -> None:
        known = self.contacts.get(agent_id)
        before = None if known is None else known.instance_id
        self._note_instance(before, instance_id, agent_id, now, started_at)
        kept = before if instance_id is None else instance_id
        self.contacts[agent_id] = AgentContact(agent_id, AgentLiveness.ALIVE, now, None, kept)
        await self._set_agent_status(agent_id, AgentLiveness.ALIVE)

    def _note_instance(
        self,
        before: str | None,
        instance_id: str | None,
        agent_id: AgentId,
        now: datetime,
        started_at: datetime | None,
    ) -> None:
        """A second, different marker is a restart: it started when it says (not after now)."""
        if before is not None and instance_id is not None and instance_id != before:
            self.instance_since[agent_id] = now if started_at is None else min(started_at, now)

    async def agents_restarted_since(self, since: datetime) -> dict[AgentId, datetime]:
        return {a: at for a, at in self.instance_since.items() if at >= since}

    async def agent_contacts(self) -> list[AgentContact]:
        return [self.contacts[a] for a in sorted(self.contacts)]

    async def mark_liveness(
        self, agent_ids: Collection[AgentId], status: AgentLiveness, now: datetime
    ) -> None:
        for a in agent_ids:
            c = self.contacts.get(a) or AgentContact(a, status, now)
            lost = (c.lost_since or now) if status is AgentLiveness.LOST else c.lost_since
            self.contacts[a] = dataclasses.replace(c, status=status, lost_since=lost)
            await self._set_agent_status(a, status)

    async def _set_agent_status(self, agent_id: AgentId, status: AgentLiveness) -> None:
        if agent_id in self.agents:
            self.agents[agent_id] = dataclasses.replace(self.agents[agent_id], status=str(status))

    async def agent_states(self, agent_ids: Collection[AgentId]) -> dict[AgentId, tuple[str, Any]]:
        return {a: (self.agents[a].status, None) for a in agent_ids if a in self.agents}

    async def live_kernel_infos(self, agent_ids: Collection[AgentId]) -> list[KernelInfo]:
        return [
            k
            for k in self.kernels.values()
            if k.agent_id in agent_ids and k.status not in TERMINAL_KERNEL_STATUSES
        ]

    # MaintenanceStore.

    def _agent(self, agent_id: AgentId, **values: Any) -> AgentRow:
        if agent_id not in self.agents:
            raise UnknownAgent(f"agent {agent_id!r} is not registered")
        self.agents[agent_id] = dataclasses.replace(self.agents[agent_id], **values)
        return self.agents[agent_id]

    async def cordon_agent(self, agent_id: AgentId) -> AgentRow:
        return self._agent(agent_id, schedulable=False)

    async def uncordon_agent(self, agent_id: AgentId) -> AgentRow:
        return self._agent(
            agent_id, schedulable=True, drain_mode=None, drain_deadline=None, drained_at=None
        )

    async def start_drain(self, agent_id: AgentId, mode: str, deadline: datetime) -> AgentRow:
        return self._agent(
            agent_id, schedulable=False, drain_mode=mode, drain_deadline=deadline, drained_at=None
        )

    async def draining_agents(self) -> list[AgentRow]:
        return [a for a in self.agents.values() if a.drain_mode and a.drained_at is None]

    async def stored_reclaim_policies(self) -> dict[str, str]:
        return dict(self.reclaim_policies)

    async def finish_drain(self, agent_id: AgentId) -> bool:
        if await self.live_kernel_infos([agent_id]):
            return False
        self._agent(agent_id, drained_at=utcnow())
        return True

    async def sessions_on_agent(self, agent_id: AgentId) -> dict[SessionId, SessionStatus]:
        live = await self.live_kernel_infos([agent_id])
        return {k.session_id: self.sessions[k.session_id].status for k in live}

    async def bring_deadlines_forward(
        self, session_ids: Collection[SessionId], when: datetime
    ) -> int:
        for sid in session_ids:
            await self.set_session_deadline(sid, when)
        return len(session_ids)

    # LeftoverStore.

    async def remember_leftovers(self, items: Sequence[Leftover], reopen: bool = False) -> int:
        for item in items:
            fresh = dataclasses.replace(item, attempts=0, destroyed_at=None)
            if reopen:
                self.leftover_rows[item.kernel_id] = fresh
            else:
                self.leftover_rows.setdefault(item.kernel_id, fresh)
        return len(items)

    async def leftovers(self, kernel_ids: Collection[KernelId] | None = None) -> list[Leftover]:
        rows = sorted(self.leftover_rows.values(), key=lambda x: x.forced_at)
        return [x for x in rows if kernel_ids is None or x.kernel_id in kernel_ids]

    async def leftovers_due(self, now: datetime | None = None, limit: int = 0) -> list[Leftover]:
        """Every leftover not yet destroyed: the stub keeps no backoff."""
        due = [x for x in await self.leftovers() if x.destroyed_at is None]
        return due[:limit] if limit else due

    async def leftovers_destroyed(self, kernel_ids: Collection[KernelId]) -> None:
        for k in kernel_ids:
            if k in self.leftover_rows:
                self.leftover_rows[k] = dataclasses.replace(
                    self.leftover_rows[k], destroyed_at=utcnow()
                )

    async def leftovers_failed(
        self, errors: Mapping[KernelId, str], *, base: float, cap: float
    ) -> None:
        for k in errors:
            row = self.leftover_rows[k]
            self.leftover_rows[k] = dataclasses.replace(row, attempts=row.attempts + 1)


class ListedPages:
    """SweepPages over pages already in memory."""

    def __init__(self, pages: list[list[SweepRow]]) -> None:
        self._pages = iter(pages)
        self.closed = False

    async def next_page(self) -> list[SweepRow] | None:
        return next(self._pages, None)

    async def close(self) -> None:
        self.closed = True


class KernelMoves:
    """The store's guarded kernel move, for the in-memory ledger to apply recorded moves."""

    def __init__(self, store: InMemoryStore) -> None:
        self._store = store

    def transition_kernels(
        self,
        kernel_ids: Collection[KernelId],
        to: KernelStatus,
        allowed_from: Collection[KernelStatus],
        *,
        status_info: str | None = None,
        values: Mapping[KernelId, Mapping[str, Any]] | None = None,
    ) -> list[KernelId]:
        return self._store.move_kernels(
            kernel_ids, to, allowed_from, status_info=status_info, values=values
        )
