"""The pending queue: PENDING sessions are placed oldest first, per scaling group, as room frees."""

from __future__ import annotations

import logging

from sokovan.db.pending_queue import PendingSession, assign_pending, pending_groups, pending_in
from sokovan.db.placement import PlacementView
from sokovan.db.repository import SchedulerRepository
from sokovan.errors import InvalidRequest, NoCapacity
from sokovan.records import Scheduled, SessionRequest
from sokovan.scheduler.submit import could_ever_fit, place
from sokovan.types import ResourceSlot

log = logging.getLogger(__name__)


def _request(p: PendingSession) -> SessionRequest:
    return SessionRequest(
        image=p.image,
        kernels=len(p.kernel_ids),
        cluster_mode=p.cluster_mode,
        resource_slots=p.slots,
        agents=p.agents,
        scaling_group=p.scaling_group,
    )


def _place_in_order(view: PlacementView, pending: list[PendingSession], out: Scheduled) -> None:
    occupied = dict(view.occupied)
    for p in pending:
        request = _request(p)
        try:
            chosen = place(request, view.agents, occupied)
        except NoCapacity:
            if could_ever_fit(request, view.agents):
                break  # FIFO: no session behind the head of the queue may overtake it
            log.warning("session %s can never fit its group's agents; it waits aside", p.id)
            continue
        except InvalidRequest as e:  # a named agent is gone: it waits without holding others
            log.warning("session %s stays PENDING: %s", p.id, e)
            continue
        if assign_pending(view.conn, p.id, dict(zip(p.kernel_ids, chosen, strict=True))):
            out.placed.append(p.id)
            for agent_id in chosen:
                occupied[agent_id] = occupied.get(agent_id, ResourceSlot()) + p.slots


def schedule_group(repo: SchedulerRepository, scaling_group: str, budget: int = 0) -> Scheduled:
    """Places the group's PENDING sessions oldest first while the head of the queue fits."""
    with repo.engine.connect() as conn:
        named = {a for p in pending_in(conn, scaling_group, budget) for a in p.agents}
    out = Scheduled()
    with repo.placement(scaling_group, named) as view:
        pending = pending_in(view.conn, scaling_group, budget)
        _place_in_order(view, pending, out)
        out.waiting = len(pending) - len(out.placed)
    return out


def schedule_pending(repo: SchedulerRepository, budget: int = 0) -> Scheduled:
    """schedule_group for every scaling group with PENDING sessions, within `budget` sessions."""
    total = Scheduled()
    with repo.engine.connect() as conn:
        groups = pending_groups(conn)
    for group in groups:
        left = budget - len(total.placed) if budget else 0
        if budget and left <= 0:
            break
        one = schedule_group(repo, group, left)
        total.placed.extend(one.placed)
        total.waiting += one.waiting
    return total
