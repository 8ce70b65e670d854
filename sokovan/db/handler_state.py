"""Paused or active, per handler; kept in SQL so it survives restarts."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from sokovan.db.base import SqlBase
from sokovan.db.schema import handler_state


class HandlerStates(SqlBase):
    """Pause and resume of handlers, honoured by beat, manual starts and recovery."""

    def is_paused(self, handler: str) -> bool:
        """Whether an operator paused the handler."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(handler_state.c.paused).where(handler_state.c.handler == handler)
            ).scalar()
        return bool(value)

    def set_paused(self, handler: str, paused: bool, reason: str | None = None) -> None:
        """Pauses or resumes a handler; survives restarts."""
        values = {
            "handler": handler,
            "paused": paused,
            "reason": reason,
            "changed_at": datetime.now(UTC),
        }
        stmt = self._insert()(handler_state).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["handler"],
            set_={"paused": paused, "reason": reason, "changed_at": values["changed_at"]},
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def handler_states(self) -> dict[str, tuple[bool, str | None]]:
        """Handler -> (paused, reason) for every handler ever paused or resumed."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(handler_state)).mappings()
            return {r["handler"]: (bool(r["paused"]), r["reason"]) for r in rows}
