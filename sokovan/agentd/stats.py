"""Kernel statistics of the reference agent's process kernels, as Backend.AI agents write them.

CPU time comes from the OS (psutil); `cpu_util` is its rate in millicores between two writes
(since the process started, on the first), stored under the bare kernel id in the stat db.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Final

import psutil
from redis.asyncio import Redis

from sokovan.activity import encode_cpu_stats

log = logging.getLogger(__name__)

# Lifetime of a kernel's statistics key: a stopped writer's figures lapse instead of lying.
KERNEL_STATS_TTL_SEC: Final = 300


class KernelStatsWriter:
    """Samples kernels' CPU time and writes their statistics; remembers the last sample."""

    def __init__(self, redis: Redis, ttl: int = KERNEL_STATS_TTL_SEC) -> None:
        self._redis = redis
        self._ttl = ttl
        self._last: dict[str, tuple[float, float]] = {}  # kernel id -> (cpu seconds, wall)

    def sample(self, kernel_id: str, pid: int) -> bytes | None:
        """The kernel's statistics value now; None when its process is gone."""
        try:
            proc = psutil.Process(pid)
            times = proc.cpu_times()
            used = times.user + times.system + times.children_user + times.children_system
            since = proc.create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._last.pop(kernel_id, None)
            return None
        now = time.time()
        prev_used, prev_wall = self._last.get(kernel_id, (0.0, since))
        self._last[kernel_id] = (used, now)
        span = max(now - prev_wall, 1e-3)
        millicores = max(used - prev_used, 0.0) / span * 1000
        return encode_cpu_stats(millicores, cpu_used_msec=used * 1000)

    async def write(self, pids: Mapping[str, int]) -> int:
        """Writes every kernel's statistics in one pipeline; returns how many were written."""
        values = {kid: v for kid, pid in pids.items() if (v := self.sample(kid, pid)) is not None}
        for gone in set(self._last) - set(pids):
            self._last.pop(gone, None)
        if not values:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for kid, value in values.items():
                pipe.set(kid, value, ex=self._ttl)
            await pipe.execute()
        return len(values)

    async def aclose(self) -> None:
        await self._redis.aclose()
