"""Session submission: validate a request, place its kernels, store it SCHEDULED."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sokovan.db.repository import AgentRow, NewKernel, SchedulerRepository
from sokovan.errors import InvalidRequest, NoCapacity, UnknownAgent, UnknownImage
from sokovan.types import (
    AgentId,
    ClusterMode,
    KernelId,
    NetworkType,
    ResourceSlot,
    SessionId,
    SessionStatus,
)

DEFAULT_SLOTS = {"cpu": "1", "mem": "1073741824"}


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """What a manager asks for; every field is JSON-friendly (see from_json)."""

    image: str
    kernels: int = 1
    cluster_mode: ClusterMode = ClusterMode.SINGLE_NODE
    network_type: NetworkType = NetworkType.VOLATILE
    network_id: str | None = None
    resource_slots: ResourceSlot = field(
        default_factory=lambda: ResourceSlot.from_json(DEFAULT_SLOTS)
    )
    environ: Mapping[str, str] = field(default_factory=dict)
    agents: tuple[AgentId, ...] = ()
    name: str = ""
    scaling_group: str = "default"
    user_uuid: uuid.UUID = field(default_factory=lambda: uuid.UUID(int=0))
    access_key: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionRequest:
        """Parses a request; raises InvalidRequest naming the field that is wrong."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        if not isinstance(data.get("image"), str) or not data["image"]:
            raise InvalidRequest("image: a non-empty image name is required")
        try:
            return cls(
                image=data["image"],
                kernels=int(data.get("kernels", 1)),
                cluster_mode=ClusterMode(data.get("cluster_mode", ClusterMode.SINGLE_NODE)),
                network_type=NetworkType(data.get("network_type", NetworkType.VOLATILE)),
                network_id=data.get("network_id"),
                resource_slots=ResourceSlot.from_json(data.get("resource_slots") or DEFAULT_SLOTS),
                environ={str(k): str(v) for k, v in (data.get("environ") or {}).items()},
                agents=tuple(AgentId(str(a)) for a in data.get("agents") or ()),
                name=str(data.get("name") or ""),
                scaling_group=str(data.get("scaling_group") or "default"),
                user_uuid=uuid.UUID(str(data.get("user_uuid") or uuid.UUID(int=0))),
                access_key=str(data.get("access_key") or ""),
            )
        except (ValueError, TypeError, ArithmeticError) as e:
            raise InvalidRequest(f"malformed session request: {e}") from e


def _roles(count: int) -> list[tuple[str, int, str]]:
    """Backend.AI's cluster roles: main1, then sub1, sub2, ..."""
    roles = [("main", 1, "main1")]
    roles += [("sub", i, f"sub{i}") for i in range(1, count)]
    return roles


def _free(agent: AgentRow, occupied: Mapping[str, ResourceSlot]) -> ResourceSlot:
    used = occupied.get(agent.id, ResourceSlot())
    return ResourceSlot({k: v - used.get(k, Decimal(0)) for k, v in agent.capacity.items()})


def _fits(free: ResourceSlot, need: ResourceSlot) -> bool:
    return all(free.get(k, Decimal(0)) >= v for k, v in need.items() if v > 0)


def place(
    request: SessionRequest, agents: Sequence[AgentRow], occupied: Mapping[str, ResourceSlot]
) -> list[AgentId]:
    """One agent per kernel: named agents as given, else the freest agents that fit."""
    by_id = {a.id: a for a in agents}
    for agent_id in request.agents:
        if agent_id not in by_id:
            raise UnknownAgent(f"agent {agent_id!r} is not registered")
        if by_id[agent_id].status != "ALIVE":
            raise UnknownAgent(f"agent {agent_id!r} is {by_id[agent_id].status}, not ALIVE")
    if request.agents:
        if len(request.agents) not in (1, request.kernels):
            raise InvalidRequest(
                f"agents: name 1 agent or one per kernel ({request.kernels}), "
                f"not {len(request.agents)}"
            )
        return [request.agents[i % len(request.agents)] for i in range(request.kernels)]
    free = {
        a.id: _free(a, occupied)
        for a in agents
        if a.status == "ALIVE" and a.scaling_group == request.scaling_group
    }
    need = request.resource_slots
    if request.cluster_mode == ClusterMode.SINGLE_NODE:
        total = ResourceSlot({k: v * request.kernels for k, v in need.items()})
        fitting = [a for a, f in free.items() if _fits(f, total)]
        if not fitting:
            raise NoCapacity(
                f"no ALIVE agent in {request.scaling_group!r} has room for "
                f"{request.kernels} kernel(s) of {need.to_json()}"
            )
        best = max(fitting, key=lambda a: (free[a].get("cpu", Decimal(0)), a))
        return [best] * request.kernels
    placed: list[AgentId] = []
    for _ in range(request.kernels):
        fitting = [a for a, f in free.items() if _fits(f, need)]
        if not fitting:
            raise NoCapacity(
                f"no room for kernel {len(placed) + 1} of {request.kernels} "
                f"({need.to_json()}) in {request.scaling_group!r}"
            )
        best = max(fitting, key=lambda a: (free[a].get("cpu", Decimal(0)), a not in placed, a))
        placed.append(best)
        free[best] = ResourceSlot({k: v - need.get(k, Decimal(0)) for k, v in free[best].items()})
    return placed


def submit_session(repo: SchedulerRepository, request: SessionRequest) -> SessionId:
    """Validates and stores a session in SCHEDULED; nothing is created on refusal."""
    if request.kernels < 1:
        raise InvalidRequest(f"kernels: at least 1 is needed, got {request.kernels}")
    if request.network_type == NetworkType.PERSISTENT and not request.network_id:
        raise InvalidRequest("network_id: a PERSISTENT network needs the id of an existing network")
    if request.image not in repo.image_configs([request.image]):
        raise UnknownImage(f"image {request.image!r} has no image config (sokovan image add)")
    agents = place(request, repo.list_agents(), repo.occupied_by_agent_grouped())
    session_id = SessionId(uuid.uuid4())
    kernels = [
        NewKernel(
            id=KernelId(uuid.uuid4()),
            agent_id=agent_id,
            image=request.image,
            requested_slots=request.resource_slots,
            cluster_role=role,
            cluster_idx=idx,
            local_rank=rank,
            cluster_hostname=host,
        )
        for rank, (agent_id, (role, idx, host)) in enumerate(
            zip(agents, _roles(request.kernels), strict=True)
        )
    ]
    return repo.create_session(
        session_id=session_id,
        name=request.name or f"session-{str(session_id)[:8]}",
        kernels_=kernels,
        status=SessionStatus.SCHEDULED,
        scaling_group=request.scaling_group,
        cluster_mode=request.cluster_mode,
        network_type=request.network_type,
        network_id=request.network_id,
        user_uuid=request.user_uuid,
        access_key=request.access_key,
        environ=request.environ,
    )
