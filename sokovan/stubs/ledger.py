"""Stub of Ledger: runs, their items and paused handlers in memory; kernel moves applied to a
KernelMover (InMemoryKernelStates, or the store stub's KernelMoves)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sokovan.types import (
    ItemOutcome,
    KernelId,
    KernelMove,
    KernelStatus,
    Recorded,
    RunId,
    RunStatus,
    RunTrigger,
)


class KernelMover(Protocol):
    """Where the in-memory ledger applies the kernel moves it records."""

    def transition_kernels(
        self,
        kernel_ids: Collection[KernelId],
        to: KernelStatus,
        allowed_from: Collection[KernelStatus],
        *,
        status_info: str | None = None,
        values: Mapping[KernelId, Mapping[str, Any]] | None = None,
    ) -> list[KernelId]: ...


class InMemoryKernelStates:
    """Kernel statuses in a dict, moved by the in-memory ledger; records every move."""

    def __init__(self, statuses: Mapping[KernelId, KernelStatus] | None = None) -> None:
        self.statuses: dict[KernelId, KernelStatus] = dict(statuses or {})
        self.info: dict[KernelId, str | None] = {}
        self.moves: list[tuple[list[KernelId], KernelStatus]] = []

    def transition_kernels(
        self,
        kernel_ids: Collection[KernelId],
        to: KernelStatus,
        allowed_from: Collection[KernelStatus],
        *,
        status_info: str | None = None,
        values: Mapping[KernelId, Mapping[str, Any]] | None = None,
    ) -> list[KernelId]:
        moved = [k for k in kernel_ids if self.statuses.get(k) in set(allowed_from)]
        for k in moved:
            self.statuses[k] = to
            if status_info is not None:
                self.info[k] = status_info
        self.moves.append((moved, to))
        return moved


@dataclass
class _Run:
    record: Any
    items: dict[str, ItemOutcome] = field(default_factory=dict)


class InMemoryLedger:
    """The Ledger port in memory: runs, their items and paused handlers; kernel moves go to
    `states`, with the outcomes that decided them."""

    def __init__(self, states: KernelMover | None = None) -> None:
        from sokovan.types import RunRecord, utcnow

        self.states = states if states is not None else InMemoryKernelStates()
        self._record = RunRecord
        self._now = utcnow
        self.runs: dict[RunId, _Run] = {}
        self.paused: set[str] = set()

    async def is_paused(self, handler: str) -> bool:
        return handler in self.paused

    async def open_run(
        self,
        handler: str,
        trigger: RunTrigger | str,
        *,
        requested: int = 0,
        scope: Any = None,
        claim_token: str | None = None,
        deadline_sec: float | None = None,
        status: RunStatus = RunStatus.RUNNING,
        note: str | None = None,
        operation: str | None = None,
    ) -> RunId:
        run_id = RunId(len(self.runs) + 1)
        now = self._now()
        deadline = None if not deadline_sec else now + timedelta(seconds=deadline_sec)
        self.runs[run_id] = _Run(
            self._record(
                run_id, handler, str(trigger), status, operation, requested, 0, 0, 0, now,
                None, deadline, None, claim_token, None, scope, note,
            )
        )  # fmt: skip
        return run_id

    async def update_run(self, run_id: RunId, **values: Any) -> None:
        run = self.runs[run_id]
        run.record = dataclasses.replace(run.record, **values)

    async def record_items(self, run_id: RunId, outcomes: Sequence[ItemOutcome]) -> int:
        items = self.runs[run_id].items
        new = [o for o in outcomes if o.item_id not in items]
        items.update((o.item_id, o) for o in new)
        return len(new)

    async def record_and_move(
        self, run_id: RunId, outcomes: Sequence[ItemOutcome], moves: Sequence[KernelMove] = ()
    ) -> Recorded:
        """Records outcomes and applies `moves` while the run is live, else keeps nothing."""
        if self.runs[run_id].record.status != RunStatus.RUNNING:
            return Recorded(counted=False, inserted=0, moved={})
        inserted = await self.record_items(run_id, outcomes)
        moved = {
            m.verdict: self.states.transition_kernels(
                m.kernel_ids, m.to, m.allowed_from, status_info=m.status_info
            )
            for m in moves
        }
        return Recorded(counted=True, inserted=inserted, moved=moved)

    def _counts(self, run_id: RunId, bulk_ok: int = 0) -> tuple[int, int, int]:
        items = self.runs[run_id].items.values()
        ok = sum(1 for o in items if o.ok and not o.skipped) + bulk_ok
        failed = sum(1 for o in items if not o.ok and not o.skipped)
        return ok, failed, sum(1 for o in items if o.skipped)

    async def close_run(
        self,
        run_id: RunId,
        *,
        error: str | None = None,
        note: str | None = None,
        bulk_ok: int = 0,
        held: bool = False,
        partial: bool = False,
    ) -> Any:
        from sokovan.db.ledger import closing_status

        run = self.runs[run_id]
        if run.record.status != RunStatus.RUNNING:
            return None
        ok, failed, skipped = self._counts(run_id, bulk_ok)
        status = closing_status(ok, failed, error, held, partial)
        run.record = dataclasses.replace(
            run.record,
            status=status,
            succeeded=ok,
            failed=failed,
            skipped=skipped,
            finished_at=self._now(),
            error=error,
            note=run.record.note if note is None else note,
        )
        return run.record

    async def finish_as(self, run_id: RunId, status: RunStatus, note: str) -> bool:
        run = self.runs[run_id]
        if run.record.status != RunStatus.RUNNING:
            return False
        run.record = dataclasses.replace(
            run.record, status=status, finished_at=self._now(), note=note
        )
        await self.recount(run_id)
        return True

    async def recount(self, run_id: RunId) -> None:
        ok, failed, skipped = self._counts(run_id)
        run = self.runs[run_id]
        run.record = dataclasses.replace(run.record, succeeded=ok, failed=failed, skipped=skipped)

    async def get_run(self, run_id: RunId) -> Any:
        from sokovan.errors import NotFound

        if run_id not in self.runs:
            raise NotFound(f"no run with id {run_id}")
        return self.runs[run_id].record

    async def outcomes(self, run_id: RunId) -> list[ItemOutcome]:
        return list(self.runs[run_id].items.values())

    async def running(self, handler: str | None = None) -> list[Any]:
        return [
            r.record
            for r in self.runs.values()
            if r.record.status == RunStatus.RUNNING and handler in (None, r.record.handler)
        ]

    async def running_past_deadline(self, now: datetime | None = None) -> list[Any]:
        now = now or self._now()
        return [
            r.record
            for r in self.runs.values()
            if r.record.status == RunStatus.RUNNING
            and r.record.deadline_at is not None
            and r.record.deadline_at < now
        ]

    async def discard_run(self, run_id: RunId) -> None:
        self.runs.pop(run_id, None)

    async def prune(self, older_than: datetime) -> int:
        old = [
            rid
            for rid, r in self.runs.items()
            if r.record.started_at < older_than and r.record.status != RunStatus.RUNNING
        ]
        for rid in old:
            del self.runs[rid]
        return len(old)
