"""Leftover rows in SQL: remembered due at once or later, kept as they were, or reopened when
a container appears after its kernel was destroyed (SC-CV-003, a create still in flight)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import sqlalchemy as sa

from sokovan.db.repository import SchedulerRepository
from sokovan.records import Leftover
from sokovan.types import AgentId, KernelId, SessionId, utcnow


def assert_leftovers_reopen(engine: sa.Engine) -> None:
    """A later leftover waits for its time; a destroyed one reopens only when asked to."""
    repo = SchedulerRepository(engine)
    now = utcnow()
    soon, later = KernelId(uuid.uuid4()), KernelId(uuid.uuid4())
    sid = SessionId(uuid.uuid4())

    def leftover(kernel: KernelId, reason: str) -> Leftover:
        return Leftover(kernel, sid, AgentId("a1"), reason, now, 0, None)

    repo.remember_leftovers([leftover(soon, "FORCE_TERMINATED")])
    repo.remember_leftovers(
        [leftover(later, "CREATE_IN_FLIGHT")], due_at=now + timedelta(seconds=60)
    )
    assert [x.kernel_id for x in repo.leftovers_due(now)] == [soon]
    assert {x.kernel_id for x in repo.leftovers_due(now + timedelta(seconds=61))} == {soon, later}

    repo.leftovers_destroyed([soon])
    repo.remember_leftovers([leftover(soon, "CREATED_AFTER_END")])
    [kept] = repo.leftovers([soon])
    assert kept.reason == "FORCE_TERMINATED" and kept.destroyed_at is not None

    repo.remember_leftovers([leftover(soon, "CREATED_AFTER_END")], reopen=True)
    [again] = repo.leftovers([soon])
    assert again.reason == "CREATED_AFTER_END" and again.destroyed_at is None
    assert soon in {x.kernel_id for x in repo.leftovers_due(now)}


def test_leftovers_reopen_on_sqlite(engine: sa.Engine) -> None:
    assert_leftovers_reopen(engine)
