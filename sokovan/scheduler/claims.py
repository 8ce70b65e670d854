"""One run per handler at a time: an atomic Redis claim that is a lease (lifetime, renewals)."""

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


def claim_key(lock_id: str) -> str:
    return f"{C.CLAIM_KEY_PREFIX}{lock_id}"


class RedisClaims:
    """SET NX PX claims; the token proves ownership on release."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

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
