"""Kernel presence in Valkey/Redis, as Backend.AI agents write and its manager reads it."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sokovan import constants as C
from sokovan.errors import PresenceUnavailable
from sokovan.types import AgentId, HealthCheckStatus, KernelId, KernelPresence

log = logging.getLogger(__name__)


def presence_key(kernel_id: KernelId | str) -> str:
    """The hash that holds one kernel's presence."""
    return f"{C.PRESENCE_KEY_PREFIX}{kernel_id}"


def judge(fields: dict[str, str], now: float, stale_after: float) -> KernelPresence | None:
    """Reads one presence hash; None when it has no `presence` field."""
    presence = fields.get("presence")
    if presence is None:
        return None
    last_presence = _float(fields.get("last_presence"))
    status = HealthCheckStatus.HEALTHY if presence == "1" else HealthCheckStatus.UNHEALTHY
    if last_presence is not None and now - last_presence > stale_after:
        status = HealthCheckStatus.STALE
    return KernelPresence(
        presence=status,
        last_presence=last_presence,
        last_check=_float(fields.get("last_check")),
        created_at=_float(fields.get("created_at")),
    )


def _float(raw: str | None) -> float | None:
    try:
        return None if raw is None else float(raw)
    except ValueError:
        return None


class ValkeyPresence:
    """Reads and writes presence hashes; one pipelined round trip per batch."""

    def __init__(
        self,
        redis: Redis,
        stale_after: float = C.PRESENCE_STALE_AFTER_SEC,
        ttl: int = C.PRESENCE_TTL_SEC,
    ) -> None:
        self._redis = redis
        self._stale_after = stale_after
        self._ttl = ttl
        self.round_trips = 0

    async def check_kernel_presence_status_batch(
        self, kernel_ids: Sequence[KernelId], agent_ids: Sequence[AgentId | None] | None = None
    ) -> dict[KernelId, KernelPresence]:
        """Presence per kernel, judged against the server's clock; absent kernels are left out."""
        if not kernel_ids:
            return {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.time()
                for kernel_id in kernel_ids:
                    pipe.hgetall(presence_key(kernel_id))
                replies: list[Any] = await pipe.execute()
        except (RedisError, OSError) as e:
            raise PresenceUnavailable(f"presence store unreadable: {e}") from e
        self.round_trips += 1
        seconds, micros = replies[0]
        now = float(seconds) + float(micros) / 1_000_000
        out: dict[KernelId, KernelPresence] = {}
        for kernel_id, raw in zip(kernel_ids, replies[1:], strict=True):
            fields = {_text(k): _text(v) for k, v in (raw or {}).items()}
            verdict = judge(fields, now, self._stale_after)
            if verdict is not None:
                out[kernel_id] = verdict
        return out

    async def write_presence(
        self, kernel_ids: Iterable[KernelId | str], alive: bool = True, now: float | None = None
    ) -> None:
        """Marks kernels present (agent side); keeps created_at of existing hashes."""
        ids = list(kernel_ids)
        if not ids:
            return
        if now is None:
            seconds, micros = await self._redis.time()
            now = float(seconds) + float(micros) / 1_000_000
        stamp = str(int(now))
        async with self._redis.pipeline(transaction=False) as pipe:
            for kernel_id in ids:
                key = presence_key(kernel_id)
                pipe.hset(
                    key,
                    mapping={
                        "presence": "1" if alive else "0",
                        "last_presence": stamp,
                        "last_check": stamp,
                    },
                )
                pipe.hsetnx(key, "created_at", stamp)
                pipe.expire(key, self._ttl)
            await pipe.execute()

    async def remove_presence(self, kernel_ids: Iterable[KernelId | str]) -> None:
        """Drops presence hashes of kernels that are gone."""
        keys = [presence_key(k) for k in kernel_ids]
        if keys:
            await self._redis.delete(*keys)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
