"""Status moves shared by several handlers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence

from sokovan.db.repository import SchedulerRepository
from sokovan.types import (
    TERMINAL_KERNEL_STATUSES,
    ItemOutcome,
    KernelId,
    KernelStatus,
    SessionId,
    SessionStatus,
)

NON_TERMINAL_KERNEL = tuple(s for s in KernelStatus if s not in TERMINAL_KERNEL_STATUSES)
NON_TERMINAL_SESSION = tuple(
    s
    for s in SessionStatus
    if s not in (SessionStatus.TERMINATED, SessionStatus.CANCELLED, SessionStatus.ERROR)
)


def parse_ids(raw: Iterable[str] | None) -> list[uuid.UUID] | None:
    """UUIDs of a run's scope; None means no scope."""
    return None if raw is None else [uuid.UUID(str(x)) for x in raw]


def kernel_ids(outcomes: Iterable[ItemOutcome]) -> list[KernelId]:
    return [KernelId(uuid.UUID(o.item_id)) for o in outcomes]


def session_ids_of(outcomes: Iterable[ItemOutcome]) -> set[SessionId]:
    out: set[SessionId] = set()
    for o in outcomes:
        sid = o.detail.get("session_id")
        if sid:
            out.add(SessionId(uuid.UUID(str(sid))))
    return out


def finish_terminated_sessions(
    repo: SchedulerRepository, session_ids: Iterable[SessionId]
) -> list[SessionId]:
    """Moves TERMINATING sessions whose kernels are all terminal to TERMINATED."""
    statuses = repo.kernel_statuses_by_session(list(session_ids))
    done = [
        sid
        for sid in session_ids
        if all(s in TERMINAL_KERNEL_STATUSES for s in statuses.get(sid, []))
    ]
    return repo.transition_sessions(done, SessionStatus.TERMINATED, [SessionStatus.TERMINATING])


async def request_termination(
    repo: SchedulerRepository, session_ids: Sequence[SessionId], reason: str
) -> list[SessionId]:
    """Moves live sessions and their kernels to TERMINATING; returns the sessions that moved."""
    moved = await asyncio.to_thread(
        repo.transition_sessions,
        session_ids,
        SessionStatus.TERMINATING,
        [s for s in NON_TERMINAL_SESSION if s != SessionStatus.TERMINATING],
        status_info=reason,
    )
    if moved:
        sessions = await asyncio.to_thread(repo.sessions_by_ids, moved)
        kernels = [k.id for s in sessions for k in s.kernels]
        await asyncio.to_thread(
            repo.transition_kernels,
            kernels,
            KernelStatus.TERMINATING,
            [s for s in NON_TERMINAL_KERNEL if s != KernelStatus.TERMINATING],
            status_info=reason,
        )
    return moved
