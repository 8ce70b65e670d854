"""The run ledger: one row per handler execution, one row per item it touched."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from sokovan.db.handler_state import HandlerStates
from sokovan.db.recording import OutcomeRecording
from sokovan.db.schema import run_items, runs
from sokovan.errors import NotFound
from sokovan.types import (
    ItemOutcome,
    RunId,
    RunItemRecord,
    RunRecord,
    RunStatus,
    RunTrigger,
    Verdict,
    utcnow,
)

_VERDICTS = frozenset(str(v) for v in Verdict)


def final_status(succeeded: int, failed: int, error: str | None) -> RunStatus:
    """The status a finished run gets from its counts."""
    if error is not None and succeeded == 0:
        return RunStatus.FAILED
    if failed == 0 and error is None:
        return RunStatus.SUCCEEDED
    return RunStatus.PARTIAL if succeeded else RunStatus.FAILED


def closing_status(
    succeeded: int, failed: int, error: str | None, held: bool, partial: bool
) -> RunStatus:
    """The status a run closed by its handler gets: held back, partly undecided, or by counts."""
    status = final_status(succeeded, failed, error)
    if held and error is None:
        return RunStatus.HELD
    if partial and status is RunStatus.SUCCEEDED:
        return RunStatus.PARTIAL
    return status


class RunLedger(OutcomeRecording, HandlerStates):
    """Reads and writes runs; every state change is a guarded update."""

    def open_run(
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
        """Creates a run row and returns its id."""
        now = utcnow()
        finished = now if status != RunStatus.RUNNING else None
        deadline = now + timedelta(seconds=deadline_sec) if deadline_sec else None
        with self.engine.begin() as conn:
            row = conn.execute(
                runs.insert()
                .values(
                    handler=handler,
                    trigger=str(trigger),
                    status=str(status),
                    requested=requested,
                    started_at=now,
                    finished_at=finished,
                    deadline_at=deadline,
                    claim_token=claim_token,
                    scope=scope,
                    note=note,
                    operation=operation,
                )
                .returning(runs.c.id)
            ).scalar_one()
        return RunId(int(row))

    def update_run(self, run_id: RunId, **values: Any) -> None:
        """Sets plain fields (requested, fanout_id, operation, note) of a running run."""
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(**values))

    def record_items(self, run_id: RunId, outcomes: Sequence[ItemOutcome]) -> int:
        """Stores outcomes; an item already recorded for the run is not counted again.

        Outcomes that reach a run no longer `running` are kept as evidence only (see
        sokovan.db.recording), so an abandoned run's late results are never counted.
        """
        return self.record_and_move(run_id, outcomes).inserted

    def close_run(
        self,
        run_id: RunId,
        *,
        error: str | None = None,
        note: str | None = None,
        bulk_ok: int = 0,
        held: bool = False,
        partial: bool = False,
    ) -> RunRecord | None:
        """Counts the items and finishes a running run; None if it was already finished.

        `bulk_ok` counts items that succeeded without a row each (healthy kernels of a sweep);
        `held` closes it as held back on purpose, whatever the counts; `partial` says some
        targets were left undecided, so a run that would have succeeded is `partial`.
        """
        with self.engine.begin() as conn:
            counts = conn.execute(
                sa.select(
                    sa.func.count().filter(sa.and_(run_items.c.ok, ~run_items.c.skipped)),
                    sa.func.count().filter(sa.and_(~run_items.c.ok, ~run_items.c.skipped)),
                    sa.func.count().filter(run_items.c.skipped),
                ).where(run_items.c.run_id == run_id, run_items.c.counted)
            ).one()
            succeeded, failed, skipped = (int(c) for c in counts)
            succeeded += bulk_ok
            values: dict[str, Any] = {
                "status": str(closing_status(succeeded, failed, error, held, partial)),
                "succeeded": succeeded,
                "failed": failed,
                "skipped": skipped,
                "finished_at": utcnow(),
                "error": error,
            }
            if note is not None:
                values["note"] = note
            done = conn.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.status == str(RunStatus.RUNNING))
                .values(**values)
            ).rowcount
        return self.get_run(run_id) if done else None

    def finish_as(self, run_id: RunId, status: RunStatus, note: str) -> bool:
        """Finishes a running run with a given status (abandoned), keeping its items."""
        with self.engine.begin() as conn:
            done = conn.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.status == str(RunStatus.RUNNING))
                .values(status=str(status), finished_at=utcnow(), note=note)
            ).rowcount
        if done:
            self.recount(run_id)
        return bool(done)

    def recount(self, run_id: RunId) -> None:
        """Sets a run's counts from its item rows (late outcomes of an abandoned run)."""
        with self.engine.begin() as conn:
            ok = sa.and_(run_items.c.ok, ~run_items.c.skipped)
            bad = sa.and_(~run_items.c.ok, ~run_items.c.skipped)
            s, f, k = conn.execute(
                sa.select(
                    sa.func.count().filter(ok),
                    sa.func.count().filter(bad),
                    sa.func.count().filter(run_items.c.skipped),
                ).where(run_items.c.run_id == run_id, run_items.c.counted)
            ).one()
            conn.execute(
                runs.update().where(runs.c.id == run_id).values(succeeded=s, failed=f, skipped=k)
            )

    def get_run(self, run_id: RunId) -> RunRecord:
        """One run; raises NotFound."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
        if row is None:
            raise NotFound(f"no run with id {run_id}")
        return run_from_row(row)

    def items(self, run_id: RunId, limit: int = 0) -> list[RunItemRecord]:
        """The outcomes recorded for a run, in recording order (the first `limit`; 0: all)."""
        query = sa.select(run_items).where(run_items.c.run_id == run_id).order_by(run_items.c.id)
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit) if limit > 0 else query).mappings()
            return [
                RunItemRecord(
                    item_id=r["item_id"],
                    agent_id=r["agent_id"],
                    ok=r["ok"],
                    skipped=r["skipped"],
                    error=r["error"],
                    duration=r["duration"],
                    evidence=dict(r["evidence"] or {}),
                    counted=bool(r["counted"]),
                )
                for r in rows
            ]

    def item_count(self, run_id: RunId) -> int:
        """How many outcomes were recorded for a run."""
        query = sa.select(sa.func.count()).where(run_items.c.run_id == run_id)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def outcomes(self, run_id: RunId) -> list[ItemOutcome]:
        """The counted items of a run as outcomes, each with its stored verdict."""
        out = []
        for i in self.items(run_id):
            if not i.counted:
                continue
            detail = dict(i.evidence)
            verdict = detail.pop("verdict", None)
            out.append(
                ItemOutcome(
                    item_id=i.item_id,
                    agent_id=i.agent_id,
                    ok=i.ok,
                    error=i.error,
                    duration=i.duration,
                    detail=detail,
                    skipped=i.skipped,
                    verdict=None if verdict not in _VERDICTS else Verdict(verdict),  # type: ignore[arg-type]
                )
            )
        return out

    def list_runs(
        self,
        handler: str | None = None,
        limit: int = 20,
        status: str | None = None,
        *,
        finished: bool = False,
    ) -> list[RunRecord]:
        """Newest runs first; `finished` leaves out runs still `running`."""
        query = sa.select(runs).order_by(runs.c.id.desc()).limit(limit)
        if handler:
            query = query.where(runs.c.handler == handler)
        if status:
            query = query.where(runs.c.status == status)
        if finished:
            query = query.where(runs.c.status != str(RunStatus.RUNNING))
        with self.engine.connect() as conn:
            return [run_from_row(r) for r in conn.execute(query).mappings()]

    def running_past_deadline(self, now: datetime | None = None) -> list[RunRecord]:
        """Runs still `running` whose deadline has passed."""
        now = now or utcnow()
        query = sa.select(runs).where(
            runs.c.status == str(RunStatus.RUNNING), runs.c.deadline_at < now
        )
        with self.engine.connect() as conn:
            return [run_from_row(r) for r in conn.execute(query).mappings()]

    def discard_run(self, run_id: RunId) -> None:
        """Deletes a run that recorded nothing (an idle beat tick)."""
        with self.engine.begin() as conn:
            conn.execute(run_items.delete().where(run_items.c.run_id == run_id))
            conn.execute(runs.delete().where(runs.c.id == run_id))

    def prune(self, older_than: datetime) -> int:
        """Deletes finished runs that started before `older_than`; returns how many."""
        with self.engine.begin() as conn:
            old = sa.select(runs.c.id).where(
                runs.c.started_at < older_than, runs.c.status != str(RunStatus.RUNNING)
            )
            conn.execute(run_items.delete().where(run_items.c.run_id.in_(old)))
            return int(conn.execute(runs.delete().where(runs.c.id.in_(old))).rowcount or 0)

    def running(self, handler: str | None = None) -> list[RunRecord]:
        """Runs still `running`, oldest first."""
        query = sa.select(runs).where(runs.c.status == str(RunStatus.RUNNING)).order_by(runs.c.id)
        if handler:
            query = query.where(runs.c.handler == handler)
        with self.engine.connect() as conn:
            return [run_from_row(r) for r in conn.execute(query).mappings()]


def run_from_row(row: Any) -> RunRecord:
    """A run record from a row of the runs table."""
    return RunRecord(
        id=RunId(row["id"]),
        handler=row["handler"],
        trigger=row["trigger"],
        status=RunStatus(row["status"]),
        operation=row["operation"],
        requested=row["requested"],
        succeeded=row["succeeded"],
        failed=row["failed"],
        skipped=row["skipped"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        deadline_at=row["deadline_at"],
        fanout_id=row["fanout_id"],
        claim_token=row["claim_token"],
        error=row["error"],
        scope=row["scope"],
        note=row["note"],
    )
