"""Status moves shared by handlers, and the one that applies a handler's declared transitions."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from sokovan.ports import SchedulerStore, SessionStore
from sokovan.records import CREATE_IN_FLIGHT, Leftover
from sokovan.types import (
    TERMINAL_KERNEL_STATUSES,
    ItemOutcome,
    KernelId,
    KernelStatus,
    SessionId,
    SessionInfo,
    SessionStatus,
    utcnow,
)

# The handler that destroys what a failed launch created (named here to avoid an import circle).
TERMINATE_HANDLER = "terminate_sessions"
# status_info of sessions whose launch failed.
FAILED_TO_START = "FAILED_TO_START"

NON_TERMINAL_KERNEL = tuple(s for s in KernelStatus if s not in TERMINAL_KERNEL_STATUSES)
NON_TERMINAL_SESSION = tuple(
    s
    for s in SessionStatus
    if s not in (SessionStatus.TERMINATED, SessionStatus.CANCELLED, SessionStatus.ERROR)
)


def parse_ids(raw: Iterable[str] | None) -> list[uuid.UUID] | None:
    """UUIDs of a run's scope; None means no scope."""
    return None if raw is None else [uuid.UUID(str(x)) for x in raw]


def is_kernel_id(item_id: str) -> bool:
    """Whether an outcome's item id names a kernel (a payload error names none)."""
    try:
        uuid.UUID(item_id)
    except ValueError:
        return False
    return True


def kernel_ids(outcomes: Iterable[ItemOutcome]) -> list[KernelId]:
    return [KernelId(uuid.UUID(o.item_id)) for o in outcomes]


def session_ids_of(outcomes: Iterable[ItemOutcome]) -> set[SessionId]:
    out: set[SessionId] = set()
    for o in outcomes:
        sid = o.detail.get("session_id")
        if sid:
            out.add(SessionId(uuid.UUID(str(sid))))
    return out


async def finish_terminated_sessions(
    repo: SessionStore, session_ids: Iterable[SessionId]
) -> list[SessionId]:
    """Moves TERMINATING sessions whose kernels are all terminal to TERMINATED."""
    return await repo.finish_sessions(list(session_ids))


async def request_termination(
    repo: SchedulerStore, session_ids: Sequence[SessionId], reason: str
) -> list[SessionId]:
    """Moves live sessions and their kernels to TERMINATING; returns the sessions that moved.

    A kernel still CREATING may have its create_kernels running on the agent, which answers a
    destroy with "already gone" and then creates it: such kernels are remembered first
    (CREATE_IN_FLIGHT), so their slots stay held and a late container is destroyed."""
    moved = await repo.transition_sessions(
        session_ids,
        SessionStatus.TERMINATING,
        [s for s in NON_TERMINAL_SESSION if s != SessionStatus.TERMINATING],
        status_info=reason,
    )
    if moved:
        sessions = await repo.sessions_by_ids(moved)
        now = utcnow()
        in_flight = [
            Leftover(k.id, s.id, k.agent_id, CREATE_IN_FLIGHT, now, 0, None)
            for s in sessions
            for k in s.kernels
            if k.agent_id and k.create_sent and k.status == KernelStatus.CREATING
        ]
        if in_flight:
            await repo.remember_leftovers(in_flight)
        kernels = [k.id for s in sessions for k in s.kernels]
        await repo.transition_kernels(
            kernels,
            KernelStatus.TERMINATING,
            [s for s in NON_TERMINAL_KERNEL if s != KernelStatus.TERMINATING],
            status_info=reason,
        )
    return moved


async def move_sessions(
    repo: SessionStore,
    sessions: Sequence[SessionInfo],
    to_session: SessionStatus,
    to_kernel: KernelStatus,
    allowed: SessionStatus,
) -> list[SessionInfo]:
    """Moves sessions (and their kernels) out of `allowed`; returns the ones that moved."""
    moved = set(await repo.transition_sessions([s.id for s in sessions], to_session, [allowed]))
    kernel_ids = [k.id for s in sessions if s.id in moved for k in s.kernels]
    await repo.transition_kernels(kernel_ids, to_kernel, [KernelStatus(str(allowed))])
    return [s for s in sessions if s.id in moved]


async def promote_sessions(
    repo: SessionStore,
    session_ids: set[SessionId],
    kernel_status: KernelStatus,
    from_status: SessionStatus,
    to_status: SessionStatus,
) -> list[SessionId]:
    """Moves sessions whose kernels all reached `kernel_status`."""
    statuses = await repo.kernel_statuses_by_session(list(session_ids))
    ready = [
        sid
        for sid in session_ids
        if statuses.get(sid) and all(s == kernel_status for s in statuses[sid])
    ]
    return await repo.transition_sessions(ready, to_status, [from_status])


async def fail_sessions(
    repo: SchedulerStore, session_ids: Sequence[SessionId], reason: str
) -> list[tuple[str, Sequence[str] | None]]:
    """Failed launches go to TERMINATING so whatever was created is destroyed."""
    moved = await request_termination(repo, sorted(session_ids), reason)
    return [(TERMINATE_HANDLER, [str(s) for s in moved])] if moved else []
