"""Stub of Claims: claims with a lifetime on a clock the test may move."""

from __future__ import annotations

import uuid


class InMemoryClaims:
    """Claims with a lifetime on a clock the test may move (`advance`)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._held: dict[str, tuple[str, float]] = {}
        self._pending: set[str] = set()
        self.released: list[str] = []
        # token -> pieces of work held; a test marks a token's holder dead with `kill`.
        self.holds: dict[str, int] = {}
        self.dead: set[str] = set()

    def kill(self, token: str) -> None:
        """The worker doing `token`'s work dies: a hold it had is now a gone holder."""
        self.dead.add(token)

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def claim(self, lock_id: str, lifetime: float) -> str | None:
        held = self._held.get(lock_id)
        if held is not None and held[1] > self.now:
            return None
        token = uuid.uuid4().hex
        self._held[lock_id] = (token, self.now + lifetime)
        return token

    async def release(self, lock_id: str, token: str) -> bool:
        held = self._held.get(lock_id)
        if held is None or held[0] != token:
            return False
        del self._held[lock_id]
        self.released.append(lock_id)
        return True

    async def renew(self, lock_id: str, token: str, lifetime: float) -> bool:
        held = self._held.get(lock_id)
        if held is None or held[0] != token or held[1] <= self.now:
            return False
        self._held[lock_id] = (token, self.now + lifetime)
        return True

    async def holder(self, lock_id: str) -> str | None:
        held = self._held.get(lock_id)
        return held[0] if held is not None and held[1] > self.now else None

    async def mark_pending(self, lock_id: str, lifetime: float) -> None:
        self._pending.add(lock_id)

    async def take_pending(self, lock_id: str) -> bool:
        if lock_id in self._pending:
            self._pending.discard(lock_id)
            return True
        return False

    async def hold(self, token: str) -> None:
        self.holds[token] = self.holds.get(token, 0) + 1

    async def unhold(self, token: str) -> None:
        self.holds[token] = self.holds.get(token, 0) - 1

    async def gone_holders(self, token: str, run_id: int | None = None) -> list[str]:
        held = self.holds.get(token, 0) > 0
        return ["in-memory"] if held and token in self.dead else []
