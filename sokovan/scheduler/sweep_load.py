"""Loading a sweep's targets: every kernel is read a page at a time, only suspects are kept.

A sweep reads every RUNNING kernel, yet judges only the few whose presence is missing or
STALE. Reading plain rows page by page and asking presence for each page (one round trip)
keeps memory at one page plus the suspects, and makes no KernelInfo for a kernel that is
fine. The handler then judges the suspects in full (presence again, their agents),
with each scaling group's total, so its ratio brake sees the whole group.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Collection, Generator, Mapping
from dataclasses import dataclass, field

from sokovan import constants as C
from sokovan.db.repository import SchedulerRepository, SweepRow
from sokovan.ports import PresenceReader
from sokovan.types import (
    AgentId,
    HealthCheckStatus,
    KernelId,
    KernelInfo,
    KernelPresence,
    KernelStatus,
    SessionId,
)


@dataclass
class GroupTargets:
    """One scaling group of a sweep: how many kernels it has, and the ones suspected."""

    total: int = 0
    suspects: list[KernelInfo] = field(default_factory=list)


@dataclass
class SweepTargets:
    """A sweep's targets per scaling group, and how many presence reads found them."""

    groups: dict[str, GroupTargets] = field(default_factory=dict)
    pages: int = 0

    @property
    def total(self) -> int:
        return sum(g.total for g in self.groups.values())


async def load_sweep_targets(
    repo: SchedulerRepository,
    presence: PresenceReader,
    statuses: Collection[KernelStatus],
    *,
    budget: int = 0,
    only: Collection[KernelId] | None = None,
    page_size: int = C.PRESENCE_PAGE_SIZE,
    stamp_agents: bool = True,
) -> SweepTargets:
    """Counts every target per scaling group and keeps those whose presence is not fresh.

    `stamp_agents` False (not every RUNNING kernel is read): the kernels' agents go without
    their last-check stamp. Raises PresenceUnavailable (from the reader) when presence
    cannot be read.
    """
    pages: Generator[list[SweepRow]] = repo.sweep_pages(
        statuses, page_size=max(1, page_size), limit=budget, only=only
    )
    targets = SweepTargets()
    try:
        await _pipeline(presence, pages, targets, stamp_agents)
    finally:
        await asyncio.to_thread(pages.close)  # releases the connection on any way out
    return targets


async def _pipeline(
    presence: PresenceReader,
    pages: Generator[list[SweepRow]],
    targets: SweepTargets,
    stamp_agents: bool,
) -> None:
    """Reads page n+1 from SQL and sorts page n-1 while Valkey reads page n's presence."""
    page = await asyncio.to_thread(next, pages, None)
    done: tuple[list[SweepRow], Mapping[KernelId, KernelPresence]] | None = None
    while page is not None:
        fetch = asyncio.ensure_future(asyncio.to_thread(next, pages, None))
        read = asyncio.ensure_future(
            presence.check_kernel_presence_status_batch(
                [row[0] for row in page],
                [None if r[2] is None else AgentId(r[2]) for r in page] if stamp_agents else None,
            )
        )
        try:
            if done is not None:
                _keep_suspects(*done, targets)
            done = (page, await read)
            targets.pages += 1
        finally:
            page = await fetch  # never leaves the generator running in a thread
    if done is not None:
        _keep_suspects(*done, targets)


def _keep_suspects(
    page: list[SweepRow], statuses: Mapping[KernelId, KernelPresence], targets: SweepTargets
) -> None:
    groups = targets.groups
    for kernel_id, session_id, agent_id, group, status, running_since in page:
        targets_of = groups.get(group)
        if targets_of is None:
            targets_of = groups[group] = GroupTargets()
        targets_of.total += 1
        seen = statuses.get(kernel_id)
        if seen is None or seen.presence == HealthCheckStatus.STALE:
            targets_of.suspects.append(
                KernelInfo(
                    id=kernel_id,
                    # Hex text on SQLite, a UUID already on PostgreSQL: str() suits both.
                    session_id=SessionId(uuid.UUID(str(session_id))),
                    agent_id=None if agent_id is None else AgentId(agent_id),
                    status=KernelStatus(status),
                    scaling_group=group,
                    running_since=running_since,
                )
            )
