"""Aggregates of the run ledger: per handler (runs, items, failure rate, duration) and per
session (kernels created, destroyed, failed, and the slots their destruction freed)."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from sokovan.db.schema import run_items, runs
from sokovan.types import Operation, ResourceSlot, RunStatus

KERNEL_OPERATIONS = (Operation.CREATE_KERNELS, Operation.DESTROY_KERNELS)
# Histogram bounds (seconds) of run durations, from a quick sweep to a long launch.
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0)


@dataclass(frozen=True, slots=True)
class HandlerStats:
    """What one handler's runs came to."""

    handler: str
    runs: int
    by_status: dict[str, int]
    succeeded: int
    failed: int
    skipped: int
    p50: float | None
    p95: float | None
    duration_sum: float

    @property
    def items(self) -> int:
        """Items the runs processed or skipped."""
        return self.succeeded + self.failed + self.skipped

    # Failed outcomes beyond the first of items that kept failing (retries of a stuck item).
    retried: int = 0

    @property
    def failure_rate(self) -> float:
        """Failed items over attempted (succeeded + failed) items; 0.0 with none attempted.

        An item that failed in several runs counts once; one that failed and later
        succeeded counts as succeeded only.
        """
        attempted = self.succeeded + self.failed
        return self.failed / attempted if attempted else 0.0


@dataclass(frozen=True, slots=True)
class SessionStats:
    """What the scheduler did to one session's kernels."""

    session_id: str
    created: int = 0
    destroyed: int = 0
    failed: int = 0
    skipped: int = 0
    freed_slots: ResourceSlot = field(default_factory=ResourceSlot)


@dataclass(frozen=True, slots=True)
class DurationHistogram:
    """Cumulative counts of finished runs of one handler by duration bound."""

    handler: str
    buckets: tuple[tuple[float, int], ...]
    count: int
    total: float


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank `q` percentile (0 < q <= 1) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class RunStats:
    """Reads aggregates from the ledger tables; each call is a few grouped queries."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def _duration(self) -> Any:
        """Seconds from start to finish, as SQL for this engine's dialect."""
        if self._engine.dialect.name == "sqlite":
            days = sa.func.julianday(runs.c.finished_at) - sa.func.julianday(runs.c.started_at)
            # julianday is a float of days: round off its error so 1.0 s stays in the 1.0 bucket.
            return sa.func.round(days * 86400.0, 3)
        return sa.func.extract("epoch", runs.c.finished_at - runs.c.started_at)

    def handlers(
        self, since: datetime | None = None, handler: str | None = None
    ) -> list[HandlerStats]:
        """Per handler: runs by status, item counts and duration percentiles of finished runs."""
        where = [runs.c.started_at >= since] if since else []
        if handler:
            where.append(runs.c.handler == handler)
        counts = sa.select(
            runs.c.handler,
            runs.c.status,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(runs.c.succeeded), 0),
            sa.func.coalesce(sa.func.sum(runs.c.failed), 0),
            sa.func.coalesce(sa.func.sum(runs.c.skipped), 0),
        ).group_by(runs.c.handler, runs.c.status)
        durations = sa.select(runs.c.handler, self._duration()).where(
            runs.c.finished_at.is_not(None)
        )
        with self._engine.connect() as conn:
            grouped = list(conn.execute(counts.where(*where)))
            timed = list(conn.execute(durations.where(*where)))
            repeats = self._repeated_failures(conn, where)
        by_handler: dict[str, list[float]] = {}
        for name, seconds in timed:
            by_handler.setdefault(name, []).append(max(0.0, float(seconds or 0.0)))
        totals: dict[str, dict[str, Any]] = {}
        for name, status, n, ok, bad, skip in grouped:
            t = totals.setdefault(name, {"by_status": {}, "ok": 0, "bad": 0, "skip": 0})
            t["by_status"][status] = int(n)
            t["ok"] += int(ok)
            t["bad"] += int(bad)
            t["skip"] += int(skip)
        return [
            HandlerStats(
                handler=name,
                runs=sum(t["by_status"].values()),
                by_status=t["by_status"],
                succeeded=t["ok"],
                failed=max(0, t["bad"] - repeats.get(name, 0)),
                skipped=t["skip"],
                retried=repeats.get(name, 0),
                p50=percentile(by_handler.get(name, []), 0.5),
                p95=percentile(by_handler.get(name, []), 0.95),
                duration_sum=sum(by_handler.get(name, [])),
            )
            for name, t in sorted(totals.items())
        ]

    def _repeated_failures(self, conn: sa.Connection, where: list[Any]) -> dict[str, int]:
        """Per handler: failed outcomes that are not an item's first distinct failure.

        That is every failed row of an item beyond its first, and every failed row of an
        item that later succeeded (it counts as succeeded).
        """
        failed = sa.and_(~run_items.c.ok, ~run_items.c.skipped)
        succeeded = sa.and_(run_items.c.ok, ~run_items.c.skipped)
        query = (
            sa.select(
                runs.c.handler,
                run_items.c.item_id,
                sa.func.count().filter(failed),
                sa.func.count().filter(succeeded),
            )
            .select_from(run_items.join(runs, run_items.c.run_id == runs.c.id))
            .where(*where)
            .group_by(runs.c.handler, run_items.c.item_id)
            .having(sa.func.count().filter(failed) > 0)
        )
        out: dict[str, int] = {}
        for handler, _item, bad, ok in conn.execute(query):
            extra = int(bad) if int(ok) else int(bad) - 1
            if extra:
                out[handler] = out.get(handler, 0) + extra
        return out

    def duration_histograms(
        self, bounds: Sequence[float] = DURATION_BUCKETS
    ) -> list[DurationHistogram]:
        """Per handler: finished runs counted under each duration bound, computed in SQL."""
        seconds = self._duration()
        columns = [sa.func.sum(sa.case((seconds <= b, 1), else_=0)) for b in bounds]
        query = (
            sa.select(
                runs.c.handler,
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(seconds), 0.0),
                *columns,
            )
            .where(runs.c.finished_at.is_not(None))
            .group_by(runs.c.handler)
            .order_by(runs.c.handler)
        )
        with self._engine.connect() as conn:
            rows = list(conn.execute(query))
        return [
            DurationHistogram(
                handler=row[0],
                buckets=tuple((b, int(c or 0)) for b, c in zip(bounds, row[3:], strict=True)),
                count=int(row[1]),
                total=max(0.0, float(row[2] or 0.0)),
            )
            for row in rows
        ]

    def running(self) -> dict[str, int]:
        """Handler -> runs still `running`."""
        query = (
            sa.select(runs.c.handler, sa.func.count())
            .where(runs.c.status == str(RunStatus.RUNNING))
            .group_by(runs.c.handler)
        )
        with self._engine.connect() as conn:
            return {str(h): int(n) for h, n in conn.execute(query)}

    def newest_skips(self, handler: str, prefix: str) -> dict[str, int]:
        """Skipped items of the handler's newest judged run whose reason starts with `prefix`,
        counted per reason (empty when it has no finished run)."""
        judged = [str(s) for s in (RunStatus.SUCCEEDED, RunStatus.PARTIAL, RunStatus.HELD)]
        newest = (
            sa.select(sa.func.max(runs.c.id))
            .where(runs.c.handler == handler, runs.c.status.in_(judged))
            .scalar_subquery()
        )
        query = (
            sa.select(run_items.c.error, sa.func.count())
            .where(
                run_items.c.run_id == newest,
                run_items.c.skipped,
                run_items.c.error.startswith(prefix, autoescape=True),
            )
            .group_by(run_items.c.error)
        )
        with self._engine.connect() as conn:
            return {str(e): int(n) for e, n in conn.execute(query)}

    def item_errors(self, handler: str) -> dict[str, int]:
        """Counted items of the handler's runs with an error text, counted per text."""
        query = (
            sa.select(run_items.c.error, sa.func.count())
            .select_from(run_items.join(runs, run_items.c.run_id == runs.c.id))
            .where(runs.c.handler == handler, run_items.c.error.is_not(None))
            .group_by(run_items.c.error)
        )
        with self._engine.connect() as conn:
            return {str(e): int(n) for e, n in conn.execute(query)}

    def sessions(
        self, session_ids: Collection[str] | None = None, since: datetime | None = None
    ) -> list[SessionStats]:
        """Per session: distinct kernels created, destroyed, failed (never succeeded), skipped,
        and the occupied slots of destroyed kernels summed (a kernel without any counts zero)."""
        query = (
            sa.select(
                run_items.c.item_id,
                run_items.c.ok,
                run_items.c.skipped,
                run_items.c.evidence,
                runs.c.operation,
                runs.c.handler,
            )
            .select_from(run_items.join(runs, run_items.c.run_id == runs.c.id))
            .where(run_items.c.counted)
            .order_by(run_items.c.id)
        )
        if since:
            query = query.where(run_items.c.recorded_at >= since)
        wanted = None if session_ids is None else {str(s) for s in session_ids}
        tally: dict[str, _SessionTally] = {}
        with self._engine.connect() as conn:
            for item_id, ok, skipped, evidence, operation, _handler in conn.execute(query):
                op = operation  # a run records its handler's declared operation when opened
                detail = dict(evidence or {})
                sid = str(detail.get("session_id") or "")
                if op not in KERNEL_OPERATIONS or not sid or (wanted and sid not in wanted):
                    continue
                tally.setdefault(sid, _SessionTally()).add(str(op), item_id, ok, skipped, detail)
        return [t.result(sid) for sid, t in sorted(tally.items())]


@dataclass
class _SessionTally:
    """Kernel outcomes of one session, by kernel id, deduplicated across runs."""

    created: set[str] = field(default_factory=set)
    destroyed: dict[str, ResourceSlot] = field(default_factory=dict)
    attempted: set[tuple[str, str]] = field(default_factory=set)
    skipped: set[tuple[str, str]] = field(default_factory=set)

    def add(self, op: str, kernel: str, ok: bool, skipped: bool, detail: dict[str, Any]) -> None:
        if skipped:
            self.skipped.add((op, kernel))
        elif not ok:
            self.attempted.add((op, kernel))
        elif op == Operation.CREATE_KERNELS:
            self.created.add(kernel)
        elif kernel not in self.destroyed:
            self.destroyed[kernel] = _slots(detail.get("occupied_slots"))

    def result(self, session_id: str) -> SessionStats:
        done = {(str(Operation.CREATE_KERNELS), k) for k in self.created}
        done |= {(str(Operation.DESTROY_KERNELS), k) for k in self.destroyed}
        freed = ResourceSlot()
        for slots in self.destroyed.values():
            freed = freed + slots
        return SessionStats(
            session_id=session_id,
            created=len(self.created),
            destroyed=len(self.destroyed),
            failed=len({k for op, k in self.attempted - done}),
            skipped=len({k for op, k in self.skipped - done}),
            freed_slots=freed,
        )


def _slots(raw: Any) -> ResourceSlot:
    """A kernel's occupied slots from an outcome; missing or unreadable counts as zero."""
    try:
        return ResourceSlot.from_json(raw if isinstance(raw, dict) else None)
    except (ArithmeticError, ValueError, TypeError):
        return ResourceSlot({})


def slot_text(slots: ResourceSlot) -> str:
    """`cpu=3,mem=3221225472` with normalised numbers; `-` when empty."""
    if not slots:
        return "-"
    return ",".join(f"{k}={format(v.normalize(), 'f')}" for k, v in sorted(slots.items()))
