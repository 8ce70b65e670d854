"""Attempts, backoff and leftovers: what the deadline paths of the handlers write."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from sokovan.db.base import SqlBase
from sokovan.db.schema import agents, kernels, leftover_kernels, sessions
from sokovan.records import Leftover
from sokovan.types import AgentId, KernelId, SessionId, utcnow

# Errors stored beside an attempt are cut to this many characters.
MAX_ERROR_TEXT = 2000


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """Exponential backoff after `attempts` failed tries: base, 2*base, 4*base, ... cap."""
    return float(min(cap, base * (2 ** max(0, attempts - 1))))


class Attempts(SqlBase):
    """Per-item attempt counts in status_data, and the leftover kernels table."""

    def note_kernel_attempts(
        self,
        errors: Mapping[KernelId, str],
        *,
        base: float,
        cap: float,
        now: datetime | None = None,
    ) -> dict[KernelId, int]:
        """Counts one more failed attempt per kernel; returns each kernel's attempts now."""
        now = now or utcnow()
        counts: dict[KernelId, int] = {}
        if not errors:
            return counts
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(kernels.c.id, kernels.c.status_data).where(kernels.c.id.in_(list(errors)))
            )
            for kid, data in list(rows):
                merged = dict(data or {})
                n = int(merged.get("attempts") or 0) + 1
                merged["attempts"] = n
                merged["next_attempt_at"] = (
                    now + timedelta(seconds=backoff_seconds(n, base, cap))
                ).isoformat()
                merged["last_error"] = errors[KernelId(kid)][:MAX_ERROR_TEXT]
                conn.execute(kernels.update().where(kernels.c.id == kid).values(status_data=merged))
                counts[KernelId(kid)] = n
        return counts

    def remember_leftovers(self, items: Sequence[Leftover], reopen: bool = False) -> int:
        """Records kernels given up on; a kernel already remembered is kept as it was, or with
        `reopen` is due again with the new reason (its container was created after it ended)."""
        rows = [
            {
                "kernel_id": i.kernel_id,
                "session_id": i.session_id,
                "agent_id": str(i.agent_id),
                "reason": i.reason,
                "forced_at": i.forced_at,
                "attempts": 0,
            }
            for i in items
        ]
        if not rows:
            return 0
        insert = self._insert()(leftover_kernels)
        if reopen:
            stmt = insert.on_conflict_do_update(
                index_elements=["kernel_id"],
                set_={
                    "reason": insert.excluded.reason,
                    "forced_at": insert.excluded.forced_at,
                    "attempts": 0,
                    "next_attempt_at": None,
                    "destroyed_at": None,
                },
            )
        else:
            stmt = insert.on_conflict_do_nothing(index_elements=["kernel_id"])
        with self.engine.begin() as conn:
            conn.execute(stmt, rows)
        return len(rows)

    def leftovers_due(self, now: datetime | None = None, limit: int = 0) -> list[Leftover]:
        """Leftovers not yet destroyed whose next attempt is due, oldest first."""
        now = now or utcnow()
        query = (
            sa.select(leftover_kernels)
            .where(
                leftover_kernels.c.destroyed_at.is_(None),
                sa.or_(
                    leftover_kernels.c.next_attempt_at.is_(None),
                    leftover_kernels.c.next_attempt_at <= now,
                ),
            )
            .order_by(leftover_kernels.c.forced_at)
        )
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [_leftover(r) for r in conn.execute(query).mappings()]

    def leftovers(self, kernel_ids: Collection[KernelId] | None = None) -> list[Leftover]:
        query = sa.select(leftover_kernels).order_by(leftover_kernels.c.forced_at)
        if kernel_ids is not None:
            query = query.where(leftover_kernels.c.kernel_id.in_(list(kernel_ids)))
        with self.engine.connect() as conn:
            return [_leftover(r) for r in conn.execute(query).mappings()]

    def leftovers_destroyed(self, kernel_ids: Collection[KernelId]) -> None:
        if not kernel_ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                leftover_kernels.update()
                .where(leftover_kernels.c.kernel_id.in_(list(kernel_ids)))
                .values(destroyed_at=utcnow())
            )

    def leftovers_failed(self, errors: Mapping[KernelId, str], *, base: float, cap: float) -> None:
        """Counts a failed destroy of leftovers and puts their next try off."""
        now = utcnow()
        with self.engine.begin() as conn:
            for kid, error in errors.items():
                n = (
                    conn.execute(
                        sa.select(leftover_kernels.c.attempts).where(
                            leftover_kernels.c.kernel_id == kid
                        )
                    ).scalar()
                    or 0
                ) + 1
                conn.execute(
                    leftover_kernels.update()
                    .where(leftover_kernels.c.kernel_id == kid)
                    .values(
                        attempts=n,
                        next_attempt_at=now + timedelta(seconds=backoff_seconds(n, base, cap)),
                        last_error=error[:MAX_ERROR_TEXT],
                    )
                )

    def agent_states(self, agent_ids: Collection[AgentId]) -> dict[AgentId, tuple[str, Any]]:
        """Agent id -> (status, last_seen) of registered agents."""
        if not agent_ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(agents.c.id, agents.c.status, agents.c.last_seen).where(
                    agents.c.id.in_(list(agent_ids))
                )
            )
            return {AgentId(r[0]): (str(r[1]), r[2]) for r in rows}

    def set_session_deadline(self, session_id: SessionId, when: datetime) -> None:
        """Brings the session's deadline in its current state forward to `when` (forced)."""
        with self.engine.begin() as conn:
            data = conn.execute(
                sa.select(sessions.c.status_data).where(sessions.c.id == session_id)
            ).scalar()
            merged = {**dict(data or {}), "deadline_at": when.isoformat()}
            conn.execute(
                sessions.update().where(sessions.c.id == session_id).values(status_data=merged)
            )


def _leftover(r: Any) -> Leftover:
    return Leftover(
        kernel_id=KernelId(r["kernel_id"]),
        session_id=SessionId(r["session_id"]),
        agent_id=AgentId(r["agent_id"]),
        reason=r["reason"],
        forced_at=r["forced_at"],
        attempts=int(r["attempts"]),
        destroyed_at=r["destroyed_at"],
    )
