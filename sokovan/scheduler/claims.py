"""One run per handler at a time: an atomic Redis claim that is a lease (lifetime, renewals),
and who is doing the work under it (see sokovan.scheduler.leases for why)."""

from __future__ import annotations

import secrets

from redis.asyncio import Redis

from sokovan import constants as C

# Deletes the claim only if the caller still holds it, so a late release cannot free
# a claim that expired and was taken by someone else.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""

# Extends the lease only for the holder: a holder whose lease lapsed (and perhaps was taken
# by the next run) cannot bring it back.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


# One piece of work under a lease ended: count it down, and forget a holder at zero.
UNHOLD = """
local left = redis.call('hincrby', KEYS[1], ARGV[1], -1)
if left <= 0 then redis.call('hdel', KEYS[1], ARGV[1]) end
return left
"""


def claim_key(lock_id: str) -> str:
    return f"{C.CLAIM_KEY_PREFIX}{lock_id}"


def holders_key(token: str) -> str:
    return f"{C.LEASE_HOLDERS_PREFIX}{token}"


def run_holders_key(run_id: int) -> str:
    return f"{C.RUN_HOLDERS_PREFIX}{run_id}"


def alive_key(incarnation: str) -> str:
    return f"{C.ALIVE_KEY_PREFIX}{incarnation}"


class RedisClaims:
    """SET NX PX claims; the token proves ownership on release.

    `holder` is the incarnation of the worker this process belongs to (None outside a
    worker: such work is watched by its lease alone)."""

    def __init__(self, redis: Redis, holder: str | None = None) -> None:
        self._redis = redis
        self._holder = holder

    async def claim(self, lock_id: str, lifetime: float) -> str | None:
        """Takes the claim and returns its token, or None when someone holds it."""
        token = secrets.token_hex(16)
        ok = await self._redis.set(claim_key(lock_id), token, nx=True, px=int(lifetime * 1000))
        return token if ok else None

    async def release(self, lock_id: str, token: str) -> bool:
        """Frees the claim if `token` still holds it."""
        result = await self._redis.eval(_RELEASE, 1, claim_key(lock_id), token)
        return bool(result)

    async def renew(self, lock_id: str, token: str, lifetime: float) -> bool:
        """Extends the lease by `lifetime` if `token` still holds it."""
        result = await self._redis.eval(
            _RENEW, 1, claim_key(lock_id), token, str(int(lifetime * 1000))
        )
        return bool(result)

    async def holder(self, lock_id: str) -> str | None:
        """The token holding the claim, if any."""
        value = await self._redis.get(claim_key(lock_id))
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def mark_pending(self, lock_id: str, lifetime: float) -> None:
        """Notes that a start was turned away, so the holder re-runs when it finishes."""
        await self._redis.set(f"{claim_key(lock_id)}:pending", "1", px=int(lifetime * 1000))

    async def take_pending(self, lock_id: str) -> bool:
        """Clears and returns the pending note."""
        return bool(await self._redis.getdel(f"{claim_key(lock_id)}:pending"))

    async def hold(self, token: str) -> None:
        """Counts one piece of work this worker does under `token`."""
        if self._holder is None:
            return
        key = holders_key(token)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, self._holder, 1)
            pipe.expire(key, int(C.LEASE_HOLDERS_TTL_SEC))
            await pipe.execute()

    async def unhold(self, token: str) -> None:
        """Counts that piece of work down."""
        if self._holder is not None:
            await self._redis.eval(UNHOLD, 1, holders_key(token), self._holder)

    async def gone_holders(self, token: str, run_id: int | None = None) -> list[str]:
        """Incarnations doing work under `token` (or holding batches of `run_id`) whose
        liveness key is gone."""
        counts: dict[str, int] = {}
        keys = [holders_key(token)] + ([] if run_id is None else [run_holders_key(run_id)])
        for key in keys:
            for k, v in (await self._redis.hgetall(key)).items():
                counts[_text(k)] = counts.get(_text(k), 0) + int(v)
        holding = sorted(h for h, n in counts.items() if n > 0)
        if not holding:
            return []
        alive = await self._redis.exists(*(alive_key(h) for h in holding))
        if alive == len(holding):
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for h in holding:
                pipe.exists(alive_key(h))
            answers = await pipe.execute()
        return [h for h, a in zip(holding, answers, strict=True) if not a]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
