"""Counts a run's fan-outs so the run closes once planning is over and every one has reported."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from redis.asyncio import Redis

from sokovan.ports import FanOut, FanOutTracking, Ledger
from sokovan.types import AgentBatch, ItemOutcome, Operation, RunId

# Bumps one field and answers whether the run is complete: planned and all fan-outs reported.
_BUMP = """
redis.call('hincrby', KEYS[1], ARGV[1], tonumber(ARGV[2]))
redis.call('expire', KEYS[1], tonumber(ARGV[3]))
local planned = tonumber(redis.call('hget', KEYS[1], 'planned') or '0')
local expected = tonumber(redis.call('hget', KEYS[1], 'expected') or '0')
local done = tonumber(redis.call('hget', KEYS[1], 'done') or '0')
if planned > 0 and done >= expected then return 1 end
return 0
"""


class FanOutTracker:
    """Per-run counters in Redis: fan-outs dispatched, fan-outs done, planning finished."""

    def __init__(self, redis: Redis, lifetime: int = 86400) -> None:
        self._redis = redis
        self._lifetime = lifetime

    async def _bump(self, run_id: RunId, field: str, by: int = 1) -> bool:
        key = f"sokovan:run:{int(run_id)}:fanouts"
        result = await self._redis.eval(_BUMP, 1, key, field, str(by), str(self._lifetime))
        return bool(result)

    async def dispatched(self, run_id: RunId, by: int = 1) -> None:
        """One more fan-out will report for this run (negative to take one back)."""
        await self._bump(run_id, "expected", by)

    async def completed(self, run_id: RunId) -> bool:
        """A fan-out reported; True when the run is now complete."""
        return await self._bump(run_id, "done")

    async def planned(self, run_id: RunId) -> bool:
        """Planning is over; True when every fan-out has already reported."""
        return await self._bump(run_id, "planned")


# Records outcomes a planner settled itself (with their declared kernel moves); returns them
# as recorded.
Settle = Callable[[RunId, Sequence[ItemOutcome]], Awaitable[list[ItemOutcome]]]


class TrackedFanOut:
    """A FanOut that counts what it dispatches for the run's completion, and records its id.

    Items settled before any agent call (kernels with no agent) are recorded with their moves
    here, by `settle`, before the fan-out is sent: the chord body only hears of them.
    """

    def __init__(
        self,
        inner: FanOut,
        tracker: FanOutTracking,
        ledger: Ledger | None,
        settle: Settle | None = None,
    ) -> None:
        self._inner = inner
        self._tracker = tracker
        self._ledger = ledger
        self._settle = settle

    async def dispatch(
        self,
        run_id: RunId,
        operation: Operation,
        batches: Sequence[AgentBatch],
        skipped: Sequence[ItemOutcome] = (),
    ) -> str:
        """Counts the fan-out first, so a fast completion never closes the run early."""
        if skipped and self._settle is not None and int(run_id):
            skipped = await self._settle(run_id, skipped)
        await self._tracker.dispatched(run_id)
        try:
            fanout_id = await self._inner.dispatch(run_id, operation, batches, skipped)
        except BaseException:
            await self._tracker.dispatched(run_id, -1)
            raise
        if self._ledger is not None and int(run_id):
            await self._ledger.update_run(run_id, fanout_id=fanout_id, operation=str(operation))
        return fanout_id
