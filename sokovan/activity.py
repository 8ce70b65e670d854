"""Session activity: kernel utilization as Backend.AI agents write it, and last-activity stamps.

A Backend.AI agent's stat collector writes, per kernel, `msgpack({metric: {"current",
"capacity", "pct", "unit_hint", "stats.*"}})` under the bare kernel id in its stat database
(db 0); its stat client's `get_kernel_statistics` reads it back. The reference agent writes
the same for its process kernels. Stamps of the last observed activity (a busy read, or a
manager's `sokovan.session.touch`) are kept beside them, one key per session.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import msgpack
from redis.asyncio import Redis

from sokovan import constants as C
from sokovan.types import KernelId, SessionId

log = logging.getLogger(__name__)

# The metric Backend.AI's agents write for CPU use (pct: of one core's capacity, 1000 mcores).
CPU_UTIL_METRIC: Final = "cpu_util"
# A week: longer than any sensible idle timeout; a session gone for that long needs no stamp.
ACTIVITY_TTL_SEC: Final = 7 * 24 * 3600


def encode_cpu_stats(millicores: float, *, cpu_used_msec: float | None = None) -> bytes:
    """A kernel's statistics value in Backend.AI's format: `cpu_util` (and `cpu_used`)."""
    current = Decimal(str(millicores)).quantize(Decimal("0.000"))
    pct = (current / Decimal(1000) * 100).quantize(Decimal("0.00"))
    metrics: dict[str, Any] = {
        CPU_UTIL_METRIC: {
            "current": str(current),
            "capacity": "1000.000",
            "pct": str(pct),
            "unit_hint": "millicores",
        }
    }
    if cpu_used_msec is not None:
        used = Decimal(str(cpu_used_msec)).quantize(Decimal("0.000"))
        metrics["cpu_used"] = {
            "current": str(used),
            "capacity": None,
            "pct": "0.00",
            "unit_hint": "msec",
        }
    return bytes(msgpack.packb(metrics))


def cpu_pct(raw: bytes | str | None) -> float | None:
    """`cpu_util`'s pct from a kernel's statistics value; None when absent or unreadable."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.encode("latin-1", "replace")
    try:
        stats = msgpack.unpackb(raw, raw=False)
        return float(stats[CPU_UTIL_METRIC]["pct"])
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
        log.warning("unreadable kernel statistics (%s): %r", e, raw[:80])
        return None


def activity_key(session_id: SessionId | str) -> str:
    return f"{C.ACTIVITY_KEY_PREFIX}{session_id}"


class ValkeyActivity:
    """Reads kernel utilization and keeps last-activity stamps in the stat database."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def utilization(self, kernel_ids: Collection[KernelId]) -> dict[KernelId, float]:
        """CPU utilization (percent of a core) per kernel; kernels without data are absent."""
        ids = list(kernel_ids)
        if not ids:
            return {}
        raws = await self._redis.mget([str(k) for k in ids])
        out: dict[KernelId, float] = {}
        for kid, raw in zip(ids, raws, strict=True):
            pct = cpu_pct(raw)
            if pct is not None:
                out[kid] = pct
        return out

    async def last_activity(self, session_ids: Collection[SessionId]) -> dict[SessionId, datetime]:
        """The newest activity stamp per session; sessions never stamped are absent."""
        ids = list(session_ids)
        if not ids:
            return {}
        raws = await self._redis.mget([activity_key(s) for s in ids])
        return {
            sid: datetime.fromtimestamp(float(raw), UTC)
            for sid, raw in zip(ids, raws, strict=True)
            if raw is not None
        }

    async def touch(self, stamps: Mapping[SessionId, datetime]) -> None:
        """Records activity; a stamp never moves back in time."""
        for sid, when in stamps.items():
            key = activity_key(sid)
            old = await self._redis.get(key)
            if old is not None and float(old) >= when.timestamp():
                continue
            await self._redis.set(key, repr(when.timestamp()), ex=ACTIVITY_TTL_SEC)
