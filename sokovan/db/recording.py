"""Recording outcomes: fenced by the run's state, and moving their kernels in the same transaction.

Only a live (`running`) run counts what it records and moves its kernels. What reaches a run
that was abandoned or closed (a holder whose lease lapsed, a redelivered task) is kept as
evidence (`counted` false) and moves nothing: the next run re-planned those kernels from the
database and counts them itself, so no kernel is counted twice across runs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from sokovan.db.base import SqlBase
from sokovan.db.feed import note
from sokovan.db.schema import kernels, run_items, runs, sessions, status_among
from sokovan.types import (
    TERMINAL_KERNEL_STATUSES,
    TERMINAL_SESSION_STATUSES,
    ItemOutcome,
    KernelId,
    KernelMove,
    KernelStatus,
    Recorded,
    RunId,
    SessionId,
    SessionStatus,
    Verdict,
)

# Ids per IN (...) list: well under SQLite's bound on host parameters.
IN_CHUNK = 500


def move_kernels(
    conn: sa.Connection,
    kernel_ids: Collection[KernelId],
    to: KernelStatus,
    allowed_from: Collection[KernelStatus],
    *,
    status_info: str | None = None,
    values: Mapping[KernelId, Mapping[str, Any]] | None = None,
) -> list[KernelId]:
    """Moves kernels in `allowed_from` to `to` inside `conn`'s transaction; returns them."""
    now = datetime.now(UTC)
    extra: dict[str, Any] = {"status": str(to), "status_changed_at": now}
    if status_info is not None:
        extra["status_info"] = status_info
    if to in TERMINAL_KERNEL_STATUSES:
        extra["terminated_at"] = now
    if to == KernelStatus.CREATING:
        extra["create_sent"] = True  # create_kernels goes out right after this move
    allowed = [str(s) for s in allowed_from]
    ids = list(kernel_ids)
    moved: list[KernelId] = []
    for start in range(0, len(ids), IN_CHUNK):
        chunk = ids[start : start + IN_CHUNK]
        # One guarded UPDATE that names what it moved: no kernel is reported moved that
        # another transaction moved first.
        stmt = (
            kernels.update()
            .where(kernels.c.id.in_(chunk), status_among(kernels.c.status, allowed))
            .values(**extra)
            .returning(kernels.c.id)
        )
        moved.extend(KernelId(k) for k in conn.execute(stmt).scalars())
    # One executemany per set of columns written, not one statement per kernel.
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for kernel_id in moved:
        if values and values.get(kernel_id):
            row = dict(values[kernel_id])
            bound = {f"new_{c}": v for c, v in row.items()}
            by_columns.setdefault(tuple(sorted(row)), []).append({"kid": kernel_id, **bound})
    for columns, rows in by_columns.items():
        write = (
            kernels.update()
            .where(kernels.c.id == sa.bindparam("kid"))
            .values({c: sa.bindparam(f"new_{c}") for c in columns})
        )
        conn.execute(write, rows)
    return moved


def move_sessions(
    conn: sa.Connection,
    session_ids: Collection[SessionId],
    to: SessionStatus,
    allowed_from: Collection[SessionStatus],
    *,
    status_info: str | None = None,
) -> list[SessionId]:
    """Moves sessions in `allowed_from` to `to` inside `conn`'s transaction; returns them."""
    if not session_ids:
        return []
    now = datetime.now(UTC)
    extra: dict[str, Any] = {"status": str(to), "status_changed_at": now}
    if status_info is not None:
        extra["status_info"] = status_info
    if to in TERMINAL_SESSION_STATUSES:
        extra["terminated_at"] = now
    stmt = (
        sessions.update()
        .where(
            sessions.c.id.in_(list(session_ids)),
            status_among(sessions.c.status, [str(s) for s in allowed_from]),
        )
        .values(**extra)
        .returning(sessions.c.id)
    )
    moved = [SessionId(s) for s in conn.execute(stmt).scalars()]
    note(conn, moved, str(to), now, status_info)
    return moved


class OutcomeRecording(SqlBase):
    """The ledger's write of outcomes, fenced by the run's status."""

    def record_and_move(
        self,
        run_id: RunId,
        outcomes: Sequence[ItemOutcome],
        moves: Sequence[KernelMove] = (),
    ) -> Recorded:
        """Stores outcomes and, while the run is live, applies `moves` in the same transaction."""
        if not outcomes:
            return Recorded(counted=True, inserted=0, moved={})
        with self.engine.begin() as conn:
            # A write first: it takes the run's row (and SQLite's write lock) for the whole
            # transaction, so an abandonment cannot slip between this check and the moves.
            live = bool(
                conn.execute(
                    runs.update()
                    .where(runs.c.id == run_id, runs.c.status == "running")
                    .values(status=runs.c.status)
                ).rowcount
            )
            inserted = self._insert_items(conn, run_id, outcomes, counted=live)
            moved: dict[Verdict, list[KernelId]] = {}
            for move in moves if live else ():
                moved[move.verdict] = move_kernels(
                    conn,
                    move.kernel_ids,
                    move.to,
                    move.allowed_from,
                    status_info=move.status_info,
                    values=move.values,
                )
        return Recorded(counted=live, inserted=inserted, moved=moved)

    def _insert_items(
        self, conn: sa.Connection, run_id: RunId, outcomes: Sequence[ItemOutcome], *, counted: bool
    ) -> int:
        now = datetime.now(UTC)
        rows = [
            {
                "run_id": run_id,
                "item_id": o.item_id,
                "agent_id": o.agent_id,
                "ok": o.ok,
                "skipped": o.skipped,
                "error": o.error,
                "duration": o.duration,
                # The verdict is stored with the evidence: `runs show` and its JSON show it.
                "evidence": {**o.detail, "verdict": str(o.verdict)},
                "recorded_at": now,
                "counted": counted,
            }
            for o in outcomes
        ]
        insert = self._insert()(run_items)
        if counted:
            # A live run keeps one outcome per item; a success replaces a failure recorded
            # before (a batch cut short by its worker's shutdown, then run again).
            new = insert.excluded
            stmt = insert.on_conflict_do_update(
                index_elements=["run_id", "item_id"],
                set_={c: new[c] for c in ("agent_id", "ok", "error", "duration", "evidence")},
                where=sa.and_(~run_items.c.ok, ~run_items.c.skipped, new.ok),
            ).returning(run_items.c.id)
        else:
            stmt = insert.on_conflict_do_nothing(index_elements=["run_id", "item_id"]).returning(
                run_items.c.id
            )
        inserted = 0
        for start in range(0, len(rows), IN_CHUNK):
            # rowcount of a batched insert is not reliable everywhere; RETURNING is.
            inserted += len(conn.execute(stmt, rows[start : start + IN_CHUNK]).all())
        return inserted
