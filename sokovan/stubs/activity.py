"""Stub of ActivityStore: utilization set by the test, activity stamps recorded."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

from sokovan.types import KernelId, SessionId


class FakeActivity:
    """An activity store in memory: utilization set by the test, stamps recorded."""

    def __init__(self, utilization: Mapping[KernelId, float] | None = None) -> None:
        self.cpu: dict[KernelId, float] = dict(utilization or {})
        self.stamps: dict[SessionId, datetime] = {}

    async def utilization(self, kernel_ids: Collection[KernelId]) -> dict[KernelId, float]:
        return {k: self.cpu[k] for k in kernel_ids if k in self.cpu}

    async def last_activity(self, session_ids: Collection[SessionId]) -> dict[SessionId, datetime]:
        return {s: self.stamps[s] for s in session_ids if s in self.stamps}

    async def touch(self, stamps: Mapping[SessionId, datetime]) -> None:
        for sid, when in stamps.items():
            if sid not in self.stamps or self.stamps[sid] < when:
                self.stamps[sid] = when
