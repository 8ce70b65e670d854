"""Many submissions under one placement lock per scaling group: one read of capacity each."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence

from sokovan.db.pending import REQUESTED_AGENTS
from sokovan.db.repository import SchedulerRepository
from sokovan.errors import SokovanError, UnknownImage
from sokovan.scheduler.submit import (
    SecretBinder,
    SessionRequest,
    Submitted,
    _store_environ,
    new_kernels,
    place_or_queue,
)
from sokovan.types import ResourceSlot, SessionId, SessionStatus


def submit_sessions(
    repo: SchedulerRepository,
    requests: Sequence[SessionRequest],
    secrets: SecretBinder | None = None,
) -> list[Submitted | SokovanError]:
    """Places and stores each request as `submit_session` would; one result per request.

    The requests of one scaling group share one placement transaction (the lock, the read
    of free capacity), and each placement counts the ones before it. A refused request gets
    its error in its place; the others are stored all the same.
    """
    known = set(repo.image_configs(sorted({r.image for r in requests})))
    results: list[Submitted | SokovanError | None] = [None] * len(requests)
    by_group: dict[str, list[int]] = {}
    for i, request in enumerate(requests):
        by_group.setdefault(request.scaling_group, []).append(i)
    for group, indexes in by_group.items():
        named = sorted({a for i in indexes for a in requests[i].agents})
        with repo.placement(group, named) as view:
            for i in indexes:
                request = requests[i]
                if request.image not in known:
                    message = f"image {request.image!r} has no image config (sokovan image add)"
                    results[i] = UnknownImage(message, field="image")
                    continue
                try:
                    results[i] = _store(repo, request, view, secrets)
                except SokovanError as e:
                    results[i] = e
                    continue
                if results[i].status == SessionStatus.PENDING:  # type: ignore[union-attr]
                    view = dataclasses.replace(view, pending=view.pending + 1)
    return [r for r in results if r is not None]


def _store(
    repo: SchedulerRepository, request: SessionRequest, view: object, secrets: SecretBinder | None
) -> Submitted:
    from sokovan.db.placement import PlacementView

    assert isinstance(view, PlacementView)
    session_id = SessionId(uuid.uuid4())
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
        status_data={REQUESTED_AGENTS: list(request.agents)}
        if placed is None and request.agents
        else None,
        conn=view.conn,
    )
    for agent_id in placed or ():
        # The next placement in this transaction sees these kernels' slots as taken.
        view.occupied[agent_id] = view.occupied.get(agent_id, ResourceSlot()) + (
            request.resource_slots
        )
    position = view.pending + 1 if placed is None else None
    return Submitted(session_id, status, position)
