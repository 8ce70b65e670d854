"""Guarded status moves of kernels and sessions, and what is written beside them."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from sokovan.db.base import SqlBase
from sokovan.db.feed import StatusChange, collecting, note
from sokovan.db.recording import IN_CHUNK, move_kernels, move_sessions
from sokovan.db.schema import kernels, sessions, status_among
from sokovan.types import (
    TERMINAL_KERNEL_STATUSES,
    KernelId,
    KernelStatus,
    SessionId,
    SessionStatus,
    utcnow,
)


class Transitions(SqlBase):
    """Every status change is `UPDATE ... WHERE status IN (allowed)`: nothing moves backwards."""

    def transition_kernels(
        self,
        kernel_ids: Collection[KernelId],
        to: KernelStatus,
        allowed_from: Collection[KernelStatus],
        *,
        status_info: str | None = None,
        values: Mapping[KernelId, Mapping[str, Any]] | None = None,
    ) -> list[KernelId]:
        """Moves kernels that are in `allowed_from` to `to`; returns the ones that moved."""
        if not kernel_ids:
            return []
        with self.engine.begin() as conn:
            return move_kernels(
                conn, kernel_ids, to, allowed_from, status_info=status_info, values=values
            )

    def transition_kernels_with_values(
        self,
        values: Mapping[KernelId, Mapping[str, Any]],
        to: KernelStatus,
        allowed_from: Collection[KernelStatus],
    ) -> list[KernelId]:
        """transition_kernels for many kernels, each also given its own column values.

        One transaction, with one executemany per set of columns however many kernels.
        """
        if not values:
            return []
        extra: dict[str, Any] = {"status": str(to), "status_changed_at": utcnow()}
        if to in TERMINAL_KERNEL_STATUSES:
            extra["terminated_at"] = extra["status_changed_at"]
        allowed = [str(s) for s in allowed_from]
        ids = list(values)
        moved: list[KernelId] = []
        with self.engine.begin() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                found = conn.execute(
                    sa.select(kernels.c.id).where(
                        kernels.c.id.in_(chunk), status_among(kernels.c.status, allowed)
                    )
                ).scalars()
                moved.extend(KernelId(k) for k in found)
            by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for kernel_id in moved:
                row = {**dict(values[kernel_id]), **extra}
                by_columns.setdefault(tuple(sorted(row)), []).append(
                    {f"v_{k}": v for k, v in row.items()} | {"b_id": kernel_id}
                )
            # executemany cannot expand IN lists: the status guard is spelled out instead.
            still_allowed = sa.or_(*(kernels.c.status == s for s in allowed))
            for columns, rows in by_columns.items():
                stmt = (
                    kernels.update()
                    .where(kernels.c.id == sa.bindparam("b_id"), still_allowed)
                    .values({c: sa.bindparam(f"v_{c}") for c in columns})
                )
                conn.execute(stmt, rows)
        return moved

    def transition_sessions(
        self,
        session_ids: Collection[SessionId],
        to: SessionStatus,
        allowed_from: Collection[SessionStatus],
        *,
        status_info: str | None = None,
    ) -> list[SessionId]:
        """Moves sessions that are in `allowed_from` to `to`; returns the ones that moved."""
        if not session_ids:
            return []
        changes: list[StatusChange] = []
        with self.engine.begin() as conn, collecting(conn, changes):
            moved = move_sessions(conn, session_ids, to, allowed_from, status_info=status_info)
        self.feed.publish(changes)
        return moved

    def finish_sessions(self, session_ids: Collection[SessionId]) -> list[SessionId]:
        """TERMINATING sessions with no kernel left to end become TERMINATED; returns them.

        One guarded UPDATE per chunk, the kernels checked inside it: reading every kernel's
        status first and moving the sessions after took 0.3 s for 10,000 sessions.
        """
        ids = list(session_ids)
        if not ids:
            return []
        now = utcnow()
        terminal = [str(s) for s in TERMINAL_KERNEL_STATUSES]
        unended = (
            sa.select(kernels.c.id)
            .where(kernels.c.session_id == sessions.c.id, kernels.c.status.not_in(terminal))
            .exists()
        )
        values = {"status": str(SessionStatus.TERMINATED), "status_changed_at": now}
        done: list[SessionId] = []
        changes: list[StatusChange] = []
        with self.engine.begin() as conn, collecting(conn, changes):
            for start in range(0, len(ids), 5000):
                stmt = (
                    sessions.update()
                    .where(
                        sessions.c.id.in_(ids[start : start + 5000]),
                        status_among(sessions.c.status, [str(SessionStatus.TERMINATING)]),
                        ~unended,
                    )
                    .values(**values, terminated_at=now)
                    .returning(sessions.c.id)
                )
                finished = [SessionId(s) for s in conn.execute(stmt).scalars()]
                note(conn, finished, str(SessionStatus.TERMINATED), now)
                done.extend(finished)
        self.feed.publish(changes)
        return done

    def kernel_statuses_by_session(
        self, session_ids: Collection[SessionId]
    ) -> dict[SessionId, list[KernelStatus]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(kernels.c.session_id, kernels.c.status).where(
                    kernels.c.session_id.in_(list(session_ids))
                )
            )
            out: dict[SessionId, list[KernelStatus]] = {}
            for sid, status in rows:
                out.setdefault(SessionId(sid), []).append(KernelStatus(status))
            return out

    def merge_session_status_data(self, session_id: SessionId, data: Mapping[str, Any]) -> None:
        self.merge_sessions_status_data([(session_id, data)])

    def merge_sessions_status_data(
        self, merges: Sequence[tuple[SessionId, Mapping[str, Any]]]
    ) -> None:
        """Merges each mapping into its session's status_data, in order, in one transaction."""
        if not merges:
            return
        with self.engine.begin() as conn:
            ids = list({sid for sid, _ in merges})
            current: dict[SessionId, dict[str, Any]] = {}
            for start in range(0, len(ids), IN_CHUNK):
                chunk = ids[start : start + IN_CHUNK]
                rows = conn.execute(
                    sa.select(sessions.c.id, sessions.c.status_data).where(sessions.c.id.in_(chunk))
                )
                current.update((SessionId(sid), dict(data or {})) for sid, data in rows)
            for sid, data in merges:
                if sid in current:
                    current[sid] = {**current[sid], **data}
            if current:
                conn.execute(
                    sessions.update()
                    .where(sessions.c.id == sa.bindparam("sid"))
                    .values(status_data=sa.bindparam("merged")),
                    [{"sid": sid, "merged": data} for sid, data in current.items()],
                )

    def set_session_network_id(self, session_id: SessionId, network_id: str | None) -> None:
        self.set_sessions_network_ids([(session_id, network_id)])

    def set_sessions_network_ids(self, ids: Sequence[tuple[SessionId, str | None]]) -> None:
        """Stores each session's network id (the last given wins), in one transaction."""
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                sessions.update()
                .where(sessions.c.id == sa.bindparam("sid"))
                .values(network_id=sa.bindparam("nid")),
                [{"sid": sid, "nid": nid} for sid, nid in dict(ids).items()],
            )
