"""Stubs of FanOut and FanOutTracking: batches run in this process or refused; plain counters."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from sokovan.types import (
    AgentBatch,
    ItemOutcome,
    Operation,
    RunId,
)

Executor = Callable[[Operation, AgentBatch], Awaitable[list[ItemOutcome]]]


@dataclass
class FanOutRecord:
    run_id: RunId
    operation: Operation
    batches: list[AgentBatch]
    skipped: list[ItemOutcome]
    outcomes: list[ItemOutcome] = field(default_factory=list)

    @property
    def succeeded(self) -> int:
        return sum(1 for o in self.outcomes if o.ok and not o.skipped)

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes if not o.ok and not o.skipped)


class InProcessFanOut:
    """Runs every batch concurrently in this process, as the Celery chord would."""

    def __init__(self, execute: Executor) -> None:
        self._execute = execute
        self.records: list[FanOutRecord] = []

    async def dispatch(
        self,
        run_id: RunId,
        operation: Operation,
        batches: Sequence[AgentBatch],
        skipped: Sequence[ItemOutcome] = (),
    ) -> str:
        record = FanOutRecord(run_id, operation, list(batches), list(skipped))
        self.records.append(record)
        results = await asyncio.gather(*(self._execute(operation, b) for b in batches))
        record.outcomes = [o for batch in results for o in batch] + list(skipped)
        return f"inprocess-{len(self.records)}"


class RefusingFanOut:
    """A FanOut for code paths that must not dispatch: any dispatch is an error."""

    def __init__(self, why: str = "this path dispatches nothing") -> None:
        self.why = why

    async def dispatch(
        self,
        run_id: RunId,
        operation: Operation,
        batches: Sequence[AgentBatch],
        skipped: Sequence[ItemOutcome] = (),
    ) -> str:
        raise AssertionError(self.why)


class InMemoryTracker:
    """FanOutTracking over plain counters."""

    def __init__(self) -> None:
        self.counts: dict[RunId, dict[str, int]] = {}

    def _bump(self, run_id: RunId, name: str, by: int = 1) -> bool:
        c = self.counts.setdefault(run_id, {"planned": 0, "expected": 0, "done": 0})
        c[name] += by
        return c["planned"] > 0 and c["done"] >= c["expected"]

    async def dispatched(self, run_id: RunId, by: int = 1) -> None:
        self._bump(run_id, "expected", by)

    async def completed(self, run_id: RunId) -> bool:
        return self._bump(run_id, "done")

    async def planned(self, run_id: RunId) -> bool:
        return self._bump(run_id, "planned")
