"""Stub of PresenceReader: verdicts set by the test, each batch read recorded."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence

from sokovan.errors import PresenceUnavailable
from sokovan.types import (
    AgentId,
    HealthCheckStatus,
    KernelId,
    KernelPresence,
)


class FakePresence:
    """Presence verdicts set by the test; records each batch read."""

    def __init__(self, statuses: Mapping[KernelId, KernelPresence] | None = None) -> None:
        self.statuses: dict[KernelId, KernelPresence] = dict(statuses or {})
        self.batches: list[list[KernelId]] = []
        # The agent ids passed with each batch (None: no agent gets a last-check stamp).
        self.agent_batches: list[list[AgentId | None] | None] = []
        # The sweep's first pass: the kernels of each page scanned, and the agents stamped.
        self.scans: list[list[KernelId]] = []
        self.agent_scans: list[list[AgentId]] = []
        self.unavailable = False

    async def check_kernel_presence_status_batch(
        self, kernel_ids: Sequence[KernelId], agent_ids: Sequence[AgentId | None] | None = None
    ) -> dict[KernelId, KernelPresence]:
        self.batches.append(list(kernel_ids))
        self.agent_batches.append(None if agent_ids is None else list(agent_ids))
        if self.unavailable:
            raise PresenceUnavailable("presence store unreadable (fake)")
        return {k: self.statuses[k] for k in kernel_ids if k in self.statuses}

    async def scan_for_suspects(
        self, kernel_ids: Sequence[str], agent_ids: Collection[AgentId] = ()
    ) -> dict[int, KernelPresence | None]:
        ids = [KernelId(uuid.UUID(k)) for k in kernel_ids]
        self.scans.append(ids)
        self.agent_scans.append(sorted(agent_ids))
        if self.unavailable:
            raise PresenceUnavailable("presence store unreadable (fake)")
        out: dict[int, KernelPresence | None] = {}
        for position, kernel_id in enumerate(ids):
            seen = self.statuses.get(kernel_id)
            if seen is None or seen.presence == HealthCheckStatus.STALE:
                out[position] = seen
        return out
