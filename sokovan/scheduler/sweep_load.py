"""Loading a sweep's targets: every kernel is read a page at a time, only suspects are kept.

A sweep reads every RUNNING kernel, yet judges only the few whose presence is missing or
STALE. Each page is plain rows (the id as the database's text, agent, scaling group) and one
presence scan, which answers with the positions of the kernels that are not plainly fresh;
so memory stays at one page plus the suspects, and no UUID, timestamp or KernelInfo is made
for a kernel that is fine. Kernels of agents restarted lately are kept too, whatever the
scan says (searched by agent, or picked from the pages under a budget): whether their
presence predates the restart is judged with the rest. The suspects
are then read in full, and the handler judges them (presence again, their agents) with each
scaling group's total, so its ratio brake sees the whole group.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import cast

from sokovan import constants as C
from sokovan.ports import PresenceReader, SessionStore, SweepPages
from sokovan.records import SweepRow
from sokovan.types import AgentId, KernelId, KernelInfo, KernelPresence, KernelStatus

# Suspects read in full per query: far below every database's bound on bound parameters.
SUSPECT_QUERY_SIZE = 2000
# Presence scans of pages sent before the oldest has answered: while the store answers one,
# this process judges the other's replies.
SCANS_IN_FLIGHT = 2
# A SweepRow's fields, taken from a whole page at C speed (no Python call per kernel).
_ID, _AGENT, _GROUP = itemgetter(0), itemgetter(1), itemgetter(2)


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
    repo: SessionStore,
    presence: PresenceReader,
    statuses: Collection[KernelStatus],
    *,
    budget: int = 0,
    only: Collection[KernelId] | None = None,
    page_size: int = C.PRESENCE_PAGE_SIZE,
    stamp_agents: bool = True,
    restarted: frozenset[AgentId] = frozenset(),
) -> SweepTargets:
    """Counts every target per scaling group and keeps those whose presence is not fresh,
    and those on a `restarted` agent.

    `stamp_agents` False (not every RUNNING kernel is read): the kernels' agents go without
    their last-check stamp. Raises PresenceUnavailable (from the reader) when presence
    cannot be read.
    """
    pages = repo.sweep_pages(statuses, page_size=max(1, page_size), limit=budget, only=only)
    targets = SweepTargets()
    suspected: list[str] = []
    # Under a budget only the kernels of its pages may be kept: they are picked from there.
    by_agent = bool(restarted) and not budget
    in_pages = frozenset() if by_agent else restarted
    try:
        await _pipeline(presence, pages, targets, suspected, stamp_agents, in_pages)
    finally:
        await pages.close()  # releases the connection on any way out
    if by_agent:
        on_restarted = await repo.sweep_ids_on_agents(statuses, restarted, only=only)
        seen = set(suspected)
        suspected.extend(k for k in on_restarted if k not in seen)
    if suspected:
        await _read_suspects(repo, statuses, suspected, targets)
    return targets


async def _pipeline(
    presence: PresenceReader,
    pages: SweepPages,
    targets: SweepTargets,
    suspected: list[str],
    stamp_agents: bool,
    restarted: frozenset[AgentId],
) -> None:
    """Reads page n+1 from SQL while Valkey scans page n and page n-1's replies are judged
    (two scans in flight, so the store never waits for this process), counting as they end."""
    reading: deque[tuple[list[SweepRow], asyncio.Future[Mapping[int, KernelPresence | None]]]]
    reading = deque()
    # Each agent's last-check key is stamped with the first page it appears on: never later
    # than the last_check of any of its kernels, which an agent would take for an orphan's.
    stamped: set[str | None] = {None}
    page = await pages.next_page()
    try:
        while page is not None:
            fetch = asyncio.ensure_future(pages.next_page())
            try:
                agents: set[AgentId] = set()
                if stamp_agents:
                    agents = cast("set[AgentId]", set(map(_AGENT, page)) - stamped)
                    stamped |= agents
                ids = list(map(_ID, page))
                reading.append(
                    (page, asyncio.ensure_future(presence.scan_for_suspects(ids, agents)))
                )
                if len(reading) >= SCANS_IN_FLIGHT:
                    await _take(reading, targets, suspected, restarted)
            finally:
                page = await fetch  # never leaves the generator running in a thread
        while reading:
            await _take(reading, targets, suspected, restarted)
    finally:
        for _, read in reading:
            read.cancel()
        await asyncio.gather(*(read for _, read in reading), return_exceptions=True)


async def _take(
    reading: deque[tuple[list[SweepRow], asyncio.Future[Mapping[int, KernelPresence | None]]]],
    targets: SweepTargets,
    suspected: list[str],
    restarted: frozenset[AgentId],
) -> None:
    """Counts the oldest scan in flight once it has answered."""
    page, read = reading[0]
    found = await read
    reading.popleft()
    targets.pages += 1
    _count(page, found, targets, suspected, restarted)


def _count(
    page: list[SweepRow],
    found: Mapping[int, KernelPresence | None],
    targets: SweepTargets,
    suspected: list[str],
    restarted: frozenset[AgentId],
) -> None:
    groups = targets.groups
    for group, count in Counter(map(_GROUP, page)).items():
        targets_of = groups.get(group)
        if targets_of is None:
            targets_of = groups[group] = GroupTargets()
        targets_of.total += count
    if restarted:
        # Rows of a restarted agent, in page order: the rule is judged on them later.
        keep = [p for p, row in enumerate(page) if p in found or row[1] in restarted]
        suspected.extend(page[position][0] for position in keep)
        return
    suspected.extend(page[position][0] for position in sorted(found))


async def _read_suspects(
    repo: SessionStore,
    statuses: Collection[KernelStatus],
    suspected: list[str],
    targets: SweepTargets,
) -> None:
    """The suspects in full; one that left the swept statuses meanwhile is no suspect now."""
    for start in range(0, len(suspected), SUSPECT_QUERY_SIZE):
        ids = [KernelId(uuid.UUID(k)) for k in suspected[start : start + SUSPECT_QUERY_SIZE]]
        for kernel in await repo.kernels_to_sweep(statuses, only=ids):
            targets_of = targets.groups.get(kernel.scaling_group)
            if targets_of is None:  # moved to another group meanwhile: counted there now
                targets_of = targets.groups[kernel.scaling_group] = GroupTargets(total=1)
            targets_of.suspects.append(kernel)
