"""Sessions, kernels, agents and images in SQL. Status changes are guarded updates."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from sokovan.db.ledger import utcnow
from sokovan.db.schema import agents, images, kernels, sessions
from sokovan.errors import NotFound, UnknownAgent
from sokovan.types import (
    TERMINAL_KERNEL_STATUSES,
    AgentAddress,
    AgentId,
    ClusterMode,
    ImageConfig,
    KernelId,
    KernelInfo,
    KernelStatus,
    NetworkType,
    ResourceSlot,
    SessionId,
    SessionInfo,
    SessionStatus,
)


@dataclass(frozen=True, slots=True)
class AgentRow:
    """A registered agent."""

    id: AgentId
    rpc_addr: str
    scaling_group: str = "default"
    status: str = "ALIVE"
    runtime: str | None = None
    capacity: ResourceSlot = field(default_factory=ResourceSlot)
    public_key: bytes | None = None


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


class SchedulerRepository:
    """Synchronous SQL access; async callers use the `a*` wrappers or a thread."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def _insert(self) -> Any:
        return postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert

    # Agents ---------------------------------------------------------------

    def upsert_agent(self, agent: AgentRow) -> None:
        """Registers an agent or refreshes its address, capacity and heartbeat."""
        now = utcnow()
        values = {
            "id": agent.id,
            "rpc_addr": agent.rpc_addr,
            "scaling_group": agent.scaling_group,
            "status": agent.status,
            "runtime": agent.runtime,
            "capacity": ResourceSlot(agent.capacity).to_json(),
            "public_key": agent.public_key,
            "registered_at": now,
            "last_seen": now,
        }
        update = {k: v for k, v in values.items() if k not in ("id", "registered_at")}
        stmt = self._insert()(agents).values(**values)
        stmt = stmt.on_conflict_do_update(index_elements=["id"], set_=update)
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def mark_agents(self, agent_ids: Collection[str], status: str) -> int:
        if not agent_ids:
            return 0
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    agents.update().where(agents.c.id.in_(list(agent_ids))).values(status=status)
                ).rowcount
            )

    def list_agents(self, scaling_group: str | None = None) -> list[AgentRow]:
        query = sa.select(agents).order_by(agents.c.id)
        if scaling_group:
            query = query.where(agents.c.scaling_group == scaling_group)
        with self.engine.connect() as conn:
            return [_agent(r) for r in conn.execute(query).mappings()]

    def get_agent(self, agent_id: str) -> AgentRow:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(agents).where(agents.c.id == agent_id)).mappings().first()
        if row is None:
            raise UnknownAgent(f"agent {agent_id!r} is not registered")
        return _agent(row)

    def occupied_by_agent(self) -> dict[str, ResourceSlot]:
        """Slots held by non-terminal kernels, per agent."""
        query = sa.select(kernels.c.agent_id, kernels.c.requested_slots).where(
            kernels.c.agent_id.is_not(None),
            kernels.c.status.not_in([str(s) for s in TERMINAL_KERNEL_STATUSES]),
        )
        out: dict[str, ResourceSlot] = {}
        with self.engine.connect() as conn:
            for agent_id, slots in conn.execute(query):
                out[agent_id] = out.get(agent_id, ResourceSlot()) + ResourceSlot.from_json(slots)
        return out

    def occupied_by_agent_grouped(self) -> dict[str, ResourceSlot]:
        """occupied_by_agent, counted in SQL: one row per agent and distinct slot set.

        Kernels of a cluster mostly share their slots, so this reads a handful of rows
        where occupied_by_agent reads one per live kernel.
        """
        slots_text = sa.cast(kernels.c.requested_slots, sa.Text)
        query = (
            sa.select(kernels.c.agent_id, slots_text, sa.func.count())
            .where(
                kernels.c.agent_id.is_not(None),
                kernels.c.status.not_in([str(s) for s in TERMINAL_KERNEL_STATUSES]),
            )
            .group_by(kernels.c.agent_id, slots_text)
        )
        out: dict[str, ResourceSlot] = {}
        with self.engine.connect() as conn:
            for agent_id, text, count in conn.execute(query):
                slots = ResourceSlot.from_json(json.loads(text) if text else None)
                total = ResourceSlot({k: v * count for k, v in slots.items()})
                out[agent_id] = out.get(agent_id, ResourceSlot()) + total
        return out

    async def resolve(self, agent_id: AgentId) -> AgentAddress:
        """AgentDirectory port: where the agent listens."""
        row = await asyncio.to_thread(self.get_agent, agent_id)
        return AgentAddress(agent_id=row.id, rpc_addr=row.rpc_addr, public_key=row.public_key)

    # Images ---------------------------------------------------------------

    def add_image(self, image: ImageConfig) -> None:
        values = {
            "canonical": image.canonical,
            "architecture": image.architecture,
            "registry_name": image.registry_name,
            "registry_url": image.registry_url,
            "is_local": image.is_local,
            "digest": image.digest,
            "labels": dict(image.labels),
        }
        stmt = self._insert()(images).values(**values)
        stmt = stmt.on_conflict_do_update(index_elements=["canonical"], set_=values)
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def image_configs(self, names: Iterable[str] | None = None) -> dict[str, ImageConfig]:
        query = sa.select(images)
        if names is not None:
            query = query.where(images.c.canonical.in_(list(set(names))))
        with self.engine.connect() as conn:
            return {
                r["canonical"]: ImageConfig(
                    canonical=r["canonical"],
                    architecture=r["architecture"],
                    registry_name=r["registry_name"],
                    registry_url=r["registry_url"],
                    is_local=r["is_local"],
                    digest=r["digest"],
                    labels=dict(r["labels"] or {}),
                )
                for r in conn.execute(query).mappings()
            }

    # Sessions and kernels ---------------------------------------------------

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
    ) -> SessionId:
        """Inserts a session with its kernels in one transaction."""
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                sessions.insert().values(
                    id=session_id,
                    name=name,
                    status=str(status),
                    status_data={},
                    scaling_group=scaling_group,
                    cluster_mode=str(cluster_mode),
                    network_type=str(network_type),
                    network_id=network_id,
                    user_uuid=user_uuid or uuid.UUID(int=0),
                    access_key=access_key,
                    environ=dict(environ or {}),
                    created_at=now,
                    status_changed_at=now,
                )
            )
            rows = [
                {
                    "id": k.id,
                    "session_id": session_id,
                    "agent_id": k.agent_id,
                    "status": str(status),
                    "status_data": {},
                    "image": k.image,
                    "architecture": k.architecture,
                    "requested_slots": k.requested_slots.to_json(),
                    "occupied_slots": k.requested_slots.to_json(),
                    "cluster_role": k.cluster_role,
                    "cluster_idx": k.cluster_idx,
                    "local_rank": k.local_rank,
                    "cluster_hostname": k.cluster_hostname,
                    "scaling_group": scaling_group,
                    "created_at": now,
                    "status_changed_at": now,
                }
                for k in kernels_
            ]
            if rows:
                conn.execute(kernels.insert(), rows)
        return session_id

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
            .where(sessions.c.status.in_([str(s) for s in statuses]))
            .order_by(sessions.c.status_changed_at, sessions.c.id)
        )
        if only is not None:
            query = query.where(sessions.c.id.in_(list(only)))
        if limit:
            query = query.limit(limit)
        return self._sessions(query)

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
                by_session.setdefault(k["session_id"], []).append(_kernel(k))
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
            return [_kernel(r) for r in conn.execute(query).mappings()]

    def kernels_to_sweep(
        self,
        statuses: Collection[KernelStatus],
        *,
        limit: int = 0,
        only: Collection[KernelId] | None = None,
    ) -> list[KernelInfo]:
        """Like `kernels_in`, with only ids, status and scaling group filled in (the rest default).

        The stale sweep reads every RUNNING kernel each run and needs no more than these.
        """
        query = (
            sa.select(
                kernels.c.id,
                kernels.c.session_id,
                kernels.c.agent_id,
                kernels.c.status,
                kernels.c.scaling_group,
            )
            .where(kernels.c.status.in_([str(s) for s in statuses]))
            .order_by(kernels.c.created_at, kernels.c.id)
        )
        if only is not None:
            query = query.where(kernels.c.id.in_(list(only)))
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

    def transition_kernels(
        self,
        kernel_ids: Collection[KernelId],
        to: KernelStatus,
        allowed_from: Collection[KernelStatus],
        *,
        status_info: str | None = None,
        values: Mapping[KernelId, Mapping[str, Any]] | None = None,
    ) -> list[KernelId]:
        """Moves kernels that are in `allowed_from` to `to`; returns the ones that moved."""
        if not kernel_ids:
            return []
        now = utcnow()
        extra: dict[str, Any] = {"status": str(to), "status_changed_at": now}
        if status_info is not None:
            extra["status_info"] = status_info
        if to in TERMINAL_KERNEL_STATUSES:
            extra["terminated_at"] = now
        allowed = [str(s) for s in allowed_from]
        moved: list[KernelId] = []
        ids = list(kernel_ids)
        with self.engine.begin() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                found = (
                    conn.execute(
                        sa.select(kernels.c.id).where(
                            kernels.c.id.in_(chunk), kernels.c.status.in_(allowed)
                        )
                    )
                    .scalars()
                    .all()
                )
                if not found:
                    continue
                conn.execute(
                    kernels.update()
                    .where(kernels.c.id.in_(found), kernels.c.status.in_(allowed))
                    .values(**extra)
                )
                moved.extend(KernelId(k) for k in found)
            for kernel_id, kv in (values or {}).items():
                if kernel_id in set(moved):
                    conn.execute(kernels.update().where(kernels.c.id == kernel_id).values(**kv))
        return moved

    def transition_kernels_with_values(
        self,
        values: Mapping[KernelId, Mapping[str, Any]],
        to: KernelStatus,
        allowed_from: Collection[KernelStatus],
    ) -> list[KernelId]:
        """transition_kernels for many kernels, each also given its own column values.

        One transaction, with one executemany per set of columns however many kernels.
        """
        if not values:
            return []
        extra: dict[str, Any] = {"status": str(to), "status_changed_at": utcnow()}
        if to in TERMINAL_KERNEL_STATUSES:
            extra["terminated_at"] = extra["status_changed_at"]
        allowed = [str(s) for s in allowed_from]
        ids = list(values)
        moved: list[KernelId] = []
        with self.engine.begin() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                found = conn.execute(
                    sa.select(kernels.c.id).where(
                        kernels.c.id.in_(chunk), kernels.c.status.in_(allowed)
                    )
                ).scalars()
                moved.extend(KernelId(k) for k in found)
            by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for kernel_id in moved:
                row = {**dict(values[kernel_id]), **extra}
                by_columns.setdefault(tuple(sorted(row)), []).append(
                    {f"v_{k}": v for k, v in row.items()} | {"b_id": kernel_id}
                )
            # executemany cannot expand IN lists: the status guard is spelled out instead.
            still_allowed = sa.or_(*(kernels.c.status == s for s in allowed))
            for columns, rows in by_columns.items():
                stmt = (
                    kernels.update()
                    .where(kernels.c.id == sa.bindparam("b_id"), still_allowed)
                    .values({c: sa.bindparam(f"v_{c}") for c in columns})
                )
                conn.execute(stmt, rows)
        return moved

    def transition_sessions(
        self,
        session_ids: Collection[SessionId],
        to: SessionStatus,
        allowed_from: Collection[SessionStatus],
        *,
        status_info: str | None = None,
    ) -> list[SessionId]:
        """Moves sessions that are in `allowed_from` to `to`; returns the ones that moved."""
        if not session_ids:
            return []
        now = utcnow()
        extra: dict[str, Any] = {"status": str(to), "status_changed_at": now}
        if status_info is not None:
            extra["status_info"] = status_info
        if to in (SessionStatus.TERMINATED, SessionStatus.CANCELLED, SessionStatus.ERROR):
            extra["terminated_at"] = now
        allowed = [str(s) for s in allowed_from]
        with self.engine.begin() as conn:
            found = (
                conn.execute(
                    sa.select(sessions.c.id).where(
                        sessions.c.id.in_(list(session_ids)), sessions.c.status.in_(allowed)
                    )
                )
                .scalars()
                .all()
            )
            if found:
                conn.execute(
                    sessions.update()
                    .where(sessions.c.id.in_(found), sessions.c.status.in_(allowed))
                    .values(**extra)
                )
        return [SessionId(s) for s in found]

    def kernel_statuses_by_session(
        self, session_ids: Collection[SessionId]
    ) -> dict[SessionId, list[KernelStatus]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(kernels.c.session_id, kernels.c.status).where(
                    kernels.c.session_id.in_(list(session_ids))
                )
            )
            out: dict[SessionId, list[KernelStatus]] = {}
            for sid, status in rows:
                out.setdefault(SessionId(sid), []).append(KernelStatus(status))
            return out

    def merge_session_status_data(self, session_id: SessionId, data: Mapping[str, Any]) -> None:
        with self.engine.begin() as conn:
            current = conn.execute(
                sa.select(sessions.c.status_data).where(sessions.c.id == session_id)
            ).scalar()
            merged = {**dict(current or {}), **data}
            conn.execute(
                sessions.update().where(sessions.c.id == session_id).values(status_data=merged)
            )

    def set_session_network_id(self, session_id: SessionId, network_id: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sessions.update().where(sessions.c.id == session_id).values(network_id=network_id)
            )

    async def update_session_network_id(
        self, session_id: SessionId, network_id: str | None
    ) -> None:
        """SessionRecorder port."""
        await asyncio.to_thread(self.set_session_network_id, session_id, network_id)

    async def update_session_error_info(
        self, session_id: SessionId, error_info: Mapping[str, Any]
    ) -> None:
        """SessionRecorder port: keeps the error under status_data["error"]."""
        await asyncio.to_thread(
            self.merge_session_status_data, session_id, {"error": dict(error_info)}
        )


def _agent(r: Any) -> AgentRow:
    return AgentRow(
        id=AgentId(r["id"]),
        rpc_addr=r["rpc_addr"],
        scaling_group=r["scaling_group"],
        status=r["status"],
        runtime=r["runtime"],
        capacity=ResourceSlot.from_json(r["capacity"]),
        public_key=r["public_key"],
    )


def _kernel(r: Any) -> KernelInfo:
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
        agent_addr=r.get("rpc_addr"),
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
    )
