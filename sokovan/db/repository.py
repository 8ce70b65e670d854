"""Sessions, kernels, agents and images in SQL. Status changes are guarded updates."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Generator, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from sokovan.db.agent_contacts import LivenessStore
from sokovan.db.attempts import Attempts
from sokovan.db.feed import StatusChange, collecting, note
from sokovan.db.maintenance_state import AgentMaintenance
from sokovan.db.pending_queue import PendingQueue
from sokovan.db.placement import Placement
from sokovan.db.reclaim_policies import ReclaimPolicyRows
from sokovan.db.registry import AgentsAndImages
from sokovan.db.schema import agents, kernels, sessions, status_among
from sokovan.db.status_moves import Transitions
from sokovan.errors import NotFound
from sokovan.records import SweepRow
from sokovan.types import (
    AgentId,
    ClusterMode,
    KernelId,
    KernelInfo,
    KernelStatus,
    NetworkType,
    ResourceSlot,
    SessionId,
    SessionInfo,
    SessionStatus,
    utcnow,
)

__all__ = ["NewKernel", "SchedulerRepository", "SessionInserts"]

# Statuses before CREATING: no create_kernels has been sent for a kernel in one of them.
_NOT_YET_SENT = frozenset(
    {
        SessionStatus.PENDING,
        SessionStatus.SCHEDULED,
        SessionStatus.PREPARING,
        SessionStatus.PULLING,
        SessionStatus.PREPARED,
    }
)


@dataclass(slots=True)
class SessionInserts:
    """Rows of sessions placed in one transaction, to insert together at its end."""

    sessions: list[dict[str, Any]] = field(default_factory=list)
    kernels: list[dict[str, Any]] = field(default_factory=list)
    statuses: dict[SessionId, SessionStatus] = field(default_factory=dict)

    def add(self, session: dict[str, Any], kernel_rows: list[dict[str, Any]]) -> None:
        self.sessions.append(session)
        self.kernels.extend(kernel_rows)
        self.statuses[SessionId(session["id"])] = SessionStatus(session["status"])


@dataclass(frozen=True, slots=True)
class NewKernel:
    """A kernel to insert with its session."""

    id: KernelId
    agent_id: AgentId | None
    image: str
    requested_slots: ResourceSlot
    cluster_role: str = "main"
    cluster_idx: int = 1
    local_rank: int = 0
    cluster_hostname: str = "main1"
    architecture: str = "x86_64"


class SchedulerRepository(
    AgentsAndImages,
    LivenessStore,
    Transitions,
    Attempts,
    Placement,
    PendingQueue,
    AgentMaintenance,
    ReclaimPolicyRows,
):
    """Synchronous SQL access; async callers use the async port methods or a thread."""

    def create_session(
        self,
        *,
        session_id: SessionId,
        name: str,
        kernels_: Sequence[NewKernel],
        status: SessionStatus = SessionStatus.SCHEDULED,
        scaling_group: str = "default",
        cluster_mode: ClusterMode = ClusterMode.SINGLE_NODE,
        network_type: NetworkType = NetworkType.VOLATILE,
        network_id: str | None = None,
        user_uuid: uuid.UUID | None = None,
        access_key: str = "",
        environ: Mapping[str, str] | None = None,
        status_data: Mapping[str, Any] | None = None,
        conn: sa.Connection | None = None,
        into: SessionInserts | None = None,
    ) -> SessionId:
        """Inserts a session with its kernels in one transaction (`conn`'s, when given); with
        `into`, only adds their rows to it, for `insert_sessions` to write with others."""
        batch = into if into is not None else SessionInserts()
        batch.add(
            {
                "id": session_id,
                "name": name,
                "status": str(status),
                "status_data": dict(status_data or {}),
                "scaling_group": scaling_group,
                "cluster_mode": str(cluster_mode),
                "network_type": str(network_type),
                "network_id": network_id,
                "user_uuid": user_uuid or uuid.UUID(int=0),
                "access_key": access_key,
                "environ": dict(environ or {}),
            },
            [
                {
                    "id": k.id,
                    "session_id": session_id,
                    "agent_id": k.agent_id,
                    "status": str(status),
                    "status_data": {},
                    # Placed kernels wait for CREATING; one stored as already past it was sent.
                    "create_sent": status not in _NOT_YET_SENT,
                    "image": k.image,
                    "architecture": k.architecture,
                    "requested_slots": k.requested_slots.to_json(),
                    "occupied_slots": k.requested_slots.to_json(),
                    "cluster_role": k.cluster_role,
                    "cluster_idx": k.cluster_idx,
                    "local_rank": k.local_rank,
                    "cluster_hostname": k.cluster_hostname,
                    "scaling_group": scaling_group,
                }
                for k in kernels_
            ],
        )
        if into is not None:
            return session_id
        changes: list[StatusChange] = []  # published once committed, when the transaction is ours
        with ExitStack() as stack:
            if conn is None:
                conn = stack.enter_context(self.engine.begin())
                stack.enter_context(collecting(conn, changes))
            self.insert_sessions(conn, batch)
        if changes:  # only a transaction of its own: a caller's publishes once it commits
            self.feed.publish(changes)
        return session_id

    def insert_sessions(self, conn: sa.Connection, batch: SessionInserts) -> None:
        """Inserts the batch's sessions and kernels in `conn`'s transaction, a statement each."""
        if not batch.sessions:
            return
        now = utcnow()
        by_status: dict[str, list[SessionId]] = {}
        for row in batch.sessions:
            by_status.setdefault(row["status"], []).append(row["id"])
        for status, ids in by_status.items():
            note(conn, ids, status, now)
        # A microsecond apart, in the order given: queues read oldest first, ties by id.
        times = {
            row["id"]: {"created_at": at, "status_changed_at": at}
            for row, at in zip(batch.sessions, _ticks(now), strict=False)
        }
        conn.execute(sessions.insert(), [{**row, **times[row["id"]]} for row in batch.sessions])
        if batch.kernels:
            rows = [{**row, **times[row["session_id"]]} for row in batch.kernels]
            conn.execute(kernels.insert(), rows)

    def get_session(self, session_id: SessionId) -> SessionInfo:
        found = self.sessions_by_ids([session_id])
        if not found:
            raise NotFound(f"no session with id {session_id}")
        return found[0]

    def session_status_data(self, session_id: SessionId) -> dict[str, Any]:
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(sessions.c.status_data).where(sessions.c.id == session_id)
            ).scalar()
        return dict(value or {})

    def sessions_by_ids(self, ids: Collection[SessionId]) -> list[SessionInfo]:
        if not ids:
            return []
        return self._sessions(sa.select(sessions).where(sessions.c.id.in_(list(ids))))

    def sessions_in(
        self,
        statuses: Collection[SessionStatus],
        *,
        limit: int = 0,
        only: Collection[SessionId] | None = None,
    ) -> list[SessionInfo]:
        """Sessions in `statuses`, oldest status change first, at most `limit` (0: all)."""
        query = (
            sa.select(sessions)
            .where(*_sessions_wanted(statuses, only))
            .order_by(sessions.c.status_changed_at, sessions.c.id)
        )
        if limit:
            query = query.limit(limit)
        return self._sessions(query)

    def sessions_to_destroy(
        self,
        statuses: Collection[SessionStatus],
        *,
        limit: int = 0,
        only: Collection[SessionId] | None = None,
    ) -> list[SessionInfo]:
        """Like `sessions_in`, with only what destroying their kernels needs.

        Sessions: id, status, reason, status change and notes; kernels: agent, status, notes
        and occupied slots. The rest (environ, mounts, launch configs) is left unread: a
        10,000-session termination spent half of its planning decoding it.
        """
        wanted = _sessions_wanted(statuses, only)
        query = (
            sa.select(
                sessions.c.id,
                sessions.c.status,
                sessions.c.status_info,
                sessions.c.status_changed_at,
                sessions.c.status_data,
                sessions.c.scaling_group,
            )
            .where(*wanted)
            .order_by(sessions.c.status_changed_at, sessions.c.id)
        )
        if limit:
            query = query.limit(limit)
        kernel_query = sa.select(
            kernels.c.id,
            kernels.c.session_id,
            kernels.c.agent_id,
            kernels.c.status,
            kernels.c.status_data,
            kernels.c.occupied_slots,
            kernels.c.scaling_group,
            kernels.c.create_sent,
        ).order_by(kernels.c.cluster_idx)
        with self.engine.connect() as conn:
            srows = conn.execute(query).all()
            if not srows:
                return []
            if limit:
                kernel_query = kernel_query.where(kernels.c.session_id.in_([r[0] for r in srows]))
            else:
                # Every session matched: the same filter joined costs a third of a list of ids.
                kernel_query = kernel_query.select_from(
                    kernels.join(sessions, kernels.c.session_id == sessions.c.id)
                ).where(*wanted)
            krows = conn.execute(kernel_query).all()
        listed = {r[0] for r in srows}
        by_session: dict[uuid.UUID, list[KernelInfo]] = {}
        for kid, sid, agent, kstatus, kdata, slots, group, sent in krows:
            if sid not in listed:  # its session moved in between the two reads
                continue
            by_session.setdefault(sid, []).append(
                KernelInfo(
                    id=KernelId(kid),
                    session_id=SessionId(sid),
                    agent_id=None if agent is None else AgentId(agent),
                    status=KernelStatus(kstatus),
                    occupied_slots=ResourceSlot.from_json(slots),
                    scaling_group=group,
                    status_data=dict(kdata or {}),
                    create_sent=bool(sent),
                )
            )
        return [
            SessionInfo(
                id=SessionId(sid),
                kernels=tuple(by_session.get(sid, ())),
                status=SessionStatus(status),
                status_info=info,
                status_changed_at=changed,
                status_data=dict(data or {}),
                scaling_group=group,
            )
            for sid, status, info, changed, data, group in srows
        ]

    def _sessions(self, query: sa.Select[Any]) -> list[SessionInfo]:
        with self.engine.connect() as conn:
            srows = list(conn.execute(query).mappings())
            if not srows:
                return []
            krows = conn.execute(
                sa.select(kernels)
                .where(kernels.c.session_id.in_([r["id"] for r in srows]))
                .order_by(kernels.c.cluster_idx)
            ).mappings()
            by_session: dict[uuid.UUID, list[KernelInfo]] = {}
            for k in krows:
                by_session.setdefault(k["session_id"], []).append(_kernel(k, None))
        return [_session(r, by_session.get(r["id"], [])) for r in srows]

    def kernels_in(
        self,
        statuses: Collection[KernelStatus],
        *,
        scaling_group: str | None = None,
        limit: int = 0,
        only: Collection[KernelId] | None = None,
    ) -> list[KernelInfo]:
        """Kernels in `statuses`, oldest first, at most `limit` (0: all)."""
        query = (
            sa.select(kernels, agents.c.rpc_addr)
            .select_from(kernels.outerjoin(agents, kernels.c.agent_id == agents.c.id))
            .where(kernels.c.status.in_([str(s) for s in statuses]))
            .order_by(kernels.c.created_at, kernels.c.id)
        )
        if scaling_group is not None:
            query = query.where(kernels.c.scaling_group == scaling_group)
        if only is not None:
            query = query.where(kernels.c.id.in_(list(only)))
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [_kernel(r, r["rpc_addr"]) for r in conn.execute(query).mappings()]

    def kernels_to_sweep(
        self,
        statuses: Collection[KernelStatus],
        *,
        limit: int = 0,
        only: Collection[KernelId] | None = None,
    ) -> list[KernelInfo]:
        """Like `kernels_in`, with ids, status and scaling group only.

        The stale sweep reads every RUNNING kernel each run and needs no more than these.
        """
        query = sa.select(
            kernels.c.id,
            kernels.c.session_id,
            kernels.c.agent_id,
            kernels.c.status,
            kernels.c.scaling_group,
        ).order_by(kernels.c.created_at, kernels.c.id)
        wanted = [str(s) for s in statuses]
        if only is None:
            query = query.where(kernels.c.status.in_(wanted))
        else:
            query = query.where(
                kernels.c.id.in_(list(only)), status_among(kernels.c.status, wanted)
            )
        if limit:
            query = query.limit(limit)
        status_of = {str(s): s for s in KernelStatus}
        with self.engine.connect() as conn:
            return [
                KernelInfo(
                    id=kid,
                    session_id=sid,
                    agent_id=agent,
                    status=status_of[status],
                    scaling_group=group,
                )
                for kid, sid, agent, status, group in conn.execute(query)
            ]

    def sweep_pages(
        self,
        statuses: Collection[KernelStatus],
        *,
        page_size: int,
        limit: int = 0,
        only: Collection[KernelId] | None = None,
    ) -> Generator[list[SweepRow]]:
        """Kernels to sweep as plain rows, a page at a time (see SweepRow).

        No UUID, no timestamp and no KernelInfo for the many kernels a sweep does not suspect
        (`kernels_to_sweep` reads the suspects in full); one page is held at a time. Oldest
        first only under a budget; a full sweep reads in table order.
        """
        query = sa.select(
            _id_text(kernels.c.id, self.engine.dialect.name),
            kernels.c.agent_id,
            kernels.c.scaling_group,
        )
        wanted = [str(s) for s in statuses]
        if only is None:
            query = query.where(kernels.c.status.in_(wanted))
        else:
            query = query.where(
                kernels.c.id.in_(list(only)), status_among(kernels.c.status, wanted)
            )
        if limit:
            query = query.order_by(kernels.c.created_at, kernels.c.id).limit(limit)
        with self.engine.connect() as conn:
            if only is None and self.engine.dialect.name == "sqlite":
                yield from _driver_pages(conn, query, page_size)
                return
            streamed = conn.execution_options(stream_results=True, max_row_buffer=page_size)
            for part in streamed.execute(query).partitions(page_size):
                yield [tuple(row) for row in part]

    def sweep_ids_on_agents(
        self,
        statuses: Collection[KernelStatus],
        agent_ids: Collection[AgentId],
        *,
        only: Collection[KernelId] | None = None,
    ) -> list[str]:
        """Ids of the kernels to sweep that these agents host, as `sweep_pages` gives them.

        Searched by agent: a few restarted agents' kernels cost no pass over all the others.
        """
        if not agent_ids:
            return []
        query = sa.select(_id_text(kernels.c.id, self.engine.dialect.name)).where(
            kernels.c.agent_id.in_(sorted(agent_ids)),
            status_among(kernels.c.status, [str(s) for s in statuses]),
        )
        if only is not None:
            query = query.where(kernels.c.id.in_(list(only)))
        with self.engine.connect() as conn:
            return [str(k) for k in conn.execute(query).scalars()]

    def kernel_statuses(self, kernel_ids: Collection[KernelId]) -> dict[KernelId, KernelStatus]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(kernels.c.id, kernels.c.status).where(kernels.c.id.in_(list(kernel_ids)))
            )
            return {KernelId(r[0]): KernelStatus(r[1]) for r in rows}

    def scaling_groups(self) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(kernels.c.scaling_group).distinct())
            return sorted(str(r[0]) for r in rows)


def _sessions_wanted(
    statuses: Collection[SessionStatus], only: Collection[SessionId] | None
) -> list[sa.ColumnElement[bool]]:
    """The filter of sessions in `statuses`, and among `only` when given."""
    wanted: list[sa.ColumnElement[bool]] = [sessions.c.status.in_([str(s) for s in statuses])]
    if only is not None:
        wanted.append(sessions.c.id.in_(list(only)))
    return wanted


def _driver_pages(
    conn: sa.Connection, query: sa.Select[Any], page_size: int
) -> Generator[list[SweepRow]]:
    """The rows of `query` straight from the driver's cursor, a page at a time.

    SQLite's cursor steps through the table as pages are fetched, so nothing is held beyond a
    page; its rows are already plain tuples, where a SQLAlchemy row per kernel (and a tuple
    made of it) took most of a full sweep's reading time. The query's only parameters are
    statuses and a limit, rendered inline.
    """
    sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql)
        while rows := cursor.fetchmany(page_size):
            yield rows
    finally:
        cursor.close()


def _id_text(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[str]:
    """A UUID column as the database's own text: 32 hex digits on SQLite (which stores them
    so; cutting them up there cost the SQL side of a million-kernel sweep a second), the
    hyphenated form elsewhere. The presence scan and `uuid.UUID` take either."""
    if dialect == "sqlite":
        return sa.type_coerce(column, sa.String)
    return sa.cast(column, sa.String)


def _kernel(r: Any, agent_addr: str | None) -> KernelInfo:
    return KernelInfo(
        id=KernelId(r["id"]),
        session_id=SessionId(r["session_id"]),
        agent_id=None if r["agent_id"] is None else AgentId(r["agent_id"]),
        status=KernelStatus(r["status"]),
        image=r["image"],
        architecture=r["architecture"],
        occupied_slots=ResourceSlot.from_json(r["occupied_slots"]),
        cluster_role=r["cluster_role"],
        cluster_idx=r["cluster_idx"],
        cluster_hostname=r["cluster_hostname"],
        scaling_group=r["scaling_group"],
        # Passed in: a row's .get() takes the slow generic Mapping path, a third of a load.
        agent_addr=agent_addr,
        status_data=dict(r["status_data"] or {}),
    )


def _session(r: Any, ks: list[KernelInfo]) -> SessionInfo:
    return SessionInfo(
        id=SessionId(r["id"]),
        kernels=tuple(ks),
        name=r["name"],
        status=SessionStatus(r["status"]),
        scaling_group=r["scaling_group"],
        cluster_mode=ClusterMode(r["cluster_mode"]),
        network_type=NetworkType(r["network_type"]),
        network_id=r["network_id"],
        user_uuid=r["user_uuid"],
        access_key=r["access_key"],
        environ=dict(r["environ"] or {}),
        status_info=r["status_info"],
        status_changed_at=r["status_changed_at"],
        status_data=dict(r["status_data"] or {}),
    )


def _ticks(start: datetime) -> Iterator[datetime]:
    """start, then a microsecond later, and so on."""
    step = timedelta(microseconds=1)
    at = start
    while True:
        yield at
        at += step
