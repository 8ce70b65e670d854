"""Session submission: place its kernels under the placement lock, store it SCHEDULED or PENDING."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

from sokovan.db.pending_queue import REQUESTED_AGENTS
from sokovan.db.placement import PlacementView
from sokovan.db.repository import NewKernel, SchedulerRepository, SessionInserts
from sokovan.errors import AgentCordoned, InvalidRequest, NoCapacity, UnknownAgent, UnknownImage
from sokovan.ports import SecretBinder
from sokovan.records import AgentRow, SessionRequest, Submitted
from sokovan.redaction import split_environ
from sokovan.types import (
    AgentId,
    ClusterMode,
    KernelId,
    ResourceSlot,
    SessionId,
    SessionStatus,
)


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


def _check_named(request: SessionRequest, by_id: Mapping[AgentId, AgentRow]) -> None:
    for agent_id in request.agents:
        if agent_id not in by_id:
            raise UnknownAgent(f"agent {agent_id!r} is not registered", field="agents")
        if by_id[agent_id].status != "ALIVE":
            raise UnknownAgent(
                f"agent {agent_id!r} is {by_id[agent_id].status}, not ALIVE", field="agents"
            )
        if not by_id[agent_id].schedulable:
            raise AgentCordoned(
                f"agent {agent_id!r} is {by_id[agent_id].maintenance}: it takes no new kernel",
                field="agents",
            )
    if request.agents and len(request.agents) not in (1, request.kernels):
        raise InvalidRequest(
            f"name 1 agent or one per kernel ({request.kernels}), not {len(request.agents)}",
            field="agents",
        )


def _no_room(text: str) -> NoCapacity:
    return NoCapacity(text, field="resource_slots")


def place(
    request: SessionRequest, agents: Sequence[AgentRow], occupied: Mapping[str, ResourceSlot]
) -> list[AgentId]:
    """One agent per kernel: named agents as given, else the freest agents that fit."""
    by_id = {a.id: a for a in agents}
    _check_named(request, by_id)
    need = request.resource_slots
    if request.agents:
        chosen = [request.agents[i % len(request.agents)] for i in range(request.kernels)]
        for agent_id in set(chosen):
            total = ResourceSlot({k: v * chosen.count(agent_id) for k, v in need.items()})
            if not _fits(_free(by_id[agent_id], occupied), total):
                raise _no_room(f"agent {agent_id!r} has no room for {total.to_json()}")
        return chosen
    free = {
        a.id: _free(a, occupied)
        for a in agents
        if a.takes_kernels and a.scaling_group == request.scaling_group
    }
    if request.cluster_mode == ClusterMode.SINGLE_NODE:
        total = ResourceSlot({k: v * request.kernels for k, v in need.items()})
        fitting = [a for a, f in free.items() if _fits(f, total)]
        if not fitting:
            raise _no_room(
                f"no ALIVE agent in {request.scaling_group!r} has room for "
                f"{request.kernels} kernel(s) of {need.to_json()}"
            )
        best = max(fitting, key=lambda a: (free[a].get("cpu", Decimal(0)), a))
        return [best] * request.kernels
    placed: list[AgentId] = []
    for _ in range(request.kernels):
        fitting = [a for a, f in free.items() if _fits(f, need)]
        if not fitting:
            raise _no_room(
                f"no room for kernel {len(placed) + 1} of {request.kernels} "
                f"({need.to_json()}) in {request.scaling_group!r}"
            )
        best = max(fitting, key=lambda a: (free[a].get("cpu", Decimal(0)), a not in placed, a))
        placed.append(best)
        free[best] = ResourceSlot({k: v - need.get(k, Decimal(0)) for k, v in free[best].items()})
    return placed


def _store_environ(
    session_id: SessionId, environ: Mapping[str, str], secrets: SecretBinder | None, conn: Any
) -> dict[str, str]:
    """The clear variables for sessions.environ; secret ones are bound, encrypted."""
    if secrets is not None:
        return secrets.bind(session_id, environ, conn)
    clear, secret = split_environ(environ)
    if secret:
        raise InvalidRequest(
            "secret variables need the secret store", field=f"environ.{min(secret)}"
        )
    return clear


def place_or_queue(request: SessionRequest, view: PlacementView) -> list[AgentId] | None:
    """Agents for the kernels, or None to wait as PENDING; raises what makes it hopeless."""
    if view.pending and request.queue:
        # FIFO per scaling group: a newcomer does not overtake the sessions already waiting.
        _check_named(request, {a.id: a for a in view.agents})
        if could_ever_fit(request, view.agents):
            return None
    try:
        return place(request, view.agents, view.occupied)
    except NoCapacity:
        if request.queue and could_ever_fit(request, view.agents):
            return None
        raise


def could_ever_fit(request: SessionRequest, agents: Sequence[AgentRow]) -> bool:
    """False when ALIVE agents exist and none could hold the session even if empty.

    A cordoned agent counts as it will be once uncordoned: maintenance ends, so a session
    only such an agent can hold waits for it instead of being refused.
    """
    if not any(a.status == "ALIVE" for a in agents):
        return True  # an agent may yet join; the scheduling handler places it then
    try:
        place(request, [replace(a, schedulable=True) for a in agents], {})
    except NoCapacity:
        return False
    return True


def new_kernels(request: SessionRequest, placed: Sequence[AgentId | None]) -> list[NewKernel]:
    """The session's kernels with their cluster roles, on `placed` agents (None: not yet)."""
    return [
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
            zip(placed, _roles(request.kernels), strict=True)
        )
    ]


def submit_session(
    repo: SchedulerRepository, request: SessionRequest, secrets: SecretBinder | None = None
) -> Submitted:
    """Places and stores a session (PENDING if it must wait); nothing is stored on refusal.

    Secret variables are stored encrypted in the session's own transaction.
    """
    if request.image not in repo.image_configs([request.image]):
        raise UnknownImage(
            f"image {request.image!r} has no image config (sokovan image add)", field="image"
        )
    with repo.placement(request.scaling_group, request.agents) as view:
        return store_placed(repo, request, view, secrets)


def store_placed(
    repo: SchedulerRepository,
    request: SessionRequest,
    view: PlacementView,
    secrets: SecretBinder | None = None,
    into: SessionInserts | None = None,
) -> Submitted:
    """Places one request in an open placement transaction and stores it (PENDING if it
    must wait); the view then counts its kernels' slots as taken. With `into`, its rows
    join the batch the caller inserts before the transaction ends.

    A request naming a session already stored (a resent or redelivered message) is answered
    with that session as it stands."""
    session_id = request.session_id or SessionId(uuid.uuid4())
    if request.session_id is not None:
        stored = repo.stored_status(view, request.session_id)
        if stored is None and into is not None:
            stored = into.statuses.get(request.session_id)
        if stored is not None:
            return Submitted(session_id, stored)
    placed = place_or_queue(request, view)
    status = SessionStatus.PENDING if placed is None else SessionStatus.SCHEDULED
    environ = _store_environ(session_id, request.environ, secrets, view.conn)
    repo.create_session(
        session_id=session_id,
        name=request.name or f"session-{str(session_id)[:8]}",
        kernels_=new_kernels(request, placed or [None] * request.kernels),
        status=status,
        scaling_group=request.scaling_group,
        cluster_mode=request.cluster_mode,
        network_type=request.network_type,
        network_id=request.network_id,
        user_uuid=request.user_uuid,
        access_key=request.access_key,
        environ=environ,
        # A waiting session keeps the agents it named until the queue places it.
        status_data={REQUESTED_AGENTS: list(request.agents)}
        if placed is None and request.agents
        else None,
        conn=view.conn,
        into=into,
    )
    for agent_id in placed or ():
        # The next placement in this transaction sees these kernels' slots as taken.
        view.occupied[agent_id] = view.occupied.get(agent_id, ResourceSlot()) + (
            request.resource_slots
        )
    position = view.pending + 1 if placed is None else None
    return Submitted(session_id, status, position)
