"""pull_images and start_sessions: SCHEDULED -> PULLING -> PREPARED -> CREATING -> RUNNING."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta

from sokovan.db.ledger import utcnow
from sokovan.db.repository import SchedulerRepository
from sokovan.ports import FanOut
from sokovan.scheduler.coordinator import HandlerSpec, Plan
from sokovan.scheduler.launcher import SessionLauncher
from sokovan.scheduler.specs.common import (
    NON_TERMINAL_KERNEL,
    parse_ids,
    request_termination,
    session_ids_of,
)
from sokovan.scheduler.specs.terminate import NAME as TERMINATE
from sokovan.types import (
    AgentBatch,
    ItemOutcome,
    KernelId,
    KernelStatus,
    Operation,
    RunId,
    SessionId,
    SessionInfo,
    SessionStatus,
)

log = logging.getLogger(__name__)

PULL_IMAGES = "pull_images"
START_SESSIONS = "start_sessions"
FAILED_TO_START = "FAILED_TO_START"
CREATION_TIMEOUT = "CREATION_TIMEOUT"
FollowUps = Sequence[tuple[str, Sequence[str] | None]]
LauncherFactory = Callable[[FanOut], SessionLauncher]


class _DispatchLog:
    """A FanOut proxy that remembers which sessions reached dispatch."""

    def __init__(self, inner: FanOut) -> None:
        self.inner = inner
        self.sessions: set[str] = set()

    async def dispatch(
        self,
        run_id: RunId,
        operation: Operation,
        batches: Sequence[AgentBatch],
        skipped: Sequence[ItemOutcome] = (),
    ) -> str:
        fanout_id = await self.inner.dispatch(run_id, operation, batches, skipped)
        for batch in batches:
            for item in batch.items:
                if "session_id" in item:
                    self.sessions.add(str(item["session_id"]))
        return fanout_id


async def _move(
    repo: SchedulerRepository,
    sessions: Sequence[SessionInfo],
    to_session: SessionStatus,
    to_kernel: KernelStatus,
    allowed: SessionStatus,
) -> list[SessionInfo]:
    moved = set(
        await asyncio.to_thread(
            repo.transition_sessions, [s.id for s in sessions], to_session, [allowed]
        )
    )
    kernel_ids = [k.id for s in sessions if s.id in moved for k in s.kernels]
    await asyncio.to_thread(
        repo.transition_kernels, kernel_ids, to_kernel, [KernelStatus(str(allowed))]
    )
    return [s for s in sessions if s.id in moved]


async def _fail_sessions(
    repo: SchedulerRepository, session_ids: Sequence[SessionId], reason: str
) -> FollowUps:
    """Failed launches go to TERMINATING so whatever was created is destroyed."""
    moved = await request_termination(repo, sorted(session_ids), reason)
    return [(TERMINATE, [str(s) for s in moved])] if moved else []


def pull_spec(
    repo: SchedulerRepository, make_launcher: LauncherFactory, fanout: FanOut
) -> HandlerSpec:
    """Image pulling for SCHEDULED sessions: one check_and_pull task per agent."""

    async def plan(run_id: RunId, scope: Sequence[str] | None, budget: int) -> Plan:
        only = parse_ids(scope)
        sessions = await asyncio.to_thread(
            repo.sessions_in,
            [SessionStatus.SCHEDULED],
            limit=budget,
            only=None if only is None else [SessionId(u) for u in only],
        )
        sessions = await _move(
            repo, sessions, SessionStatus.PULLING, KernelStatus.PULLING, SessionStatus.SCHEDULED
        )
        if not sessions:
            return Plan(requested=0)
        images = {k.image for s in sessions for k in s.kernels}
        configs = await asyncio.to_thread(repo.image_configs, images)
        await make_launcher(fanout).trigger_image_pulling(sessions, configs, run_id=run_id)
        return Plan(requested=sum(len(s.kernels) for s in sessions), dispatched=True)

    async def complete(run_id: RunId, outcomes: Sequence[ItemOutcome]) -> FollowUps:
        ready = [KernelId(uuid.UUID(o.item_id)) for o in outcomes if o.ok and not o.skipped]
        await asyncio.to_thread(
            repo.transition_kernels, ready, KernelStatus.PREPARED, [KernelStatus.PULLING]
        )
        failed_sessions = session_ids_of(o for o in outcomes if not o.ok)
        # One error per failed session (its kernels share the agent's answer), not per kernel.
        pull_errors = {
            SessionId(uuid.UUID(str(o.detail["session_id"]))): o.error or ""
            for o in outcomes
            if not o.ok
        }
        for sid, message in pull_errors.items():
            info = {"src": "agent", "name": "ImagePullFailed", "message": message}
            await asyncio.to_thread(repo.merge_session_status_data, sid, {"error": info})
        follow: list[tuple[str, Sequence[str] | None]] = []
        follow.extend(await _fail_sessions(repo, sorted(failed_sessions), FAILED_TO_START))
        prepared = await _promote(
            repo,
            session_ids_of(outcomes) - failed_sessions,
            KernelStatus.PREPARED,
            SessionStatus.PULLING,
            SessionStatus.PREPARED,
        )
        if prepared:
            follow.append((START_SESSIONS, [str(s) for s in prepared]))
        return follow

    return HandlerSpec(
        PULL_IMAGES, "LOCKID_SOKOVAN_PULL_IMAGES", plan, {Operation.CHECK_AND_PULL: complete}
    )


async def _promote(
    repo: SchedulerRepository,
    session_ids: set[SessionId],
    kernel_status: KernelStatus,
    from_status: SessionStatus,
    to_status: SessionStatus,
) -> list[SessionId]:
    """Moves sessions whose kernels all reached `kernel_status`."""
    statuses = await asyncio.to_thread(repo.kernel_statuses_by_session, list(session_ids))
    ready = [
        sid
        for sid in session_ids
        if statuses.get(sid) and all(s == kernel_status for s in statuses[sid])
    ]
    return await asyncio.to_thread(repo.transition_sessions, ready, to_status, [from_status])


def start_spec(
    repo: SchedulerRepository,
    make_launcher: LauncherFactory,
    fanout: FanOut,
    start_timeout: float,
) -> HandlerSpec:
    """Kernel creation for PREPARED sessions: one create_kernels task per agent per run."""

    async def plan(run_id: RunId, scope: Sequence[str] | None, budget: int) -> Plan:
        follow = list(await _expire_creating(repo, start_timeout))
        only = parse_ids(scope)
        sessions = await asyncio.to_thread(
            repo.sessions_in,
            [SessionStatus.PREPARED],
            limit=budget,
            only=None if only is None else [SessionId(u) for u in only],
        )
        sessions = await _move(
            repo, sessions, SessionStatus.CREATING, KernelStatus.CREATING, SessionStatus.PREPARED
        )
        if not sessions:
            return Plan(requested=0, follow_ups=follow)
        images = {k.image for s in sessions for k in s.kernels}
        configs = await asyncio.to_thread(repo.image_configs, images)
        dispatch_log = _DispatchLog(fanout)
        await make_launcher(dispatch_log).start_sessions_for_handler(
            sessions, configs, run_id=run_id
        )
        undispatched = [s for s in sessions if str(s.id) not in dispatch_log.sessions]
        outcomes = [
            ItemOutcome(
                str(k.id),
                k.agent_id,
                ok=False,
                error=f"{FAILED_TO_START}: see session",
                detail={"session_id": str(s.id)},
            )
            for s in undispatched
            for k in s.kernels
        ]
        follow.extend(await _fail_sessions(repo, [s.id for s in undispatched], FAILED_TO_START))
        return Plan(
            requested=sum(len(s.kernels) for s in sessions),
            dispatched=True,
            outcomes=outcomes,
            follow_ups=follow,
        )

    async def complete(run_id: RunId, outcomes: Sequence[ItemOutcome]) -> FollowUps:
        await apply_created(repo, outcomes)
        failed = [KernelId(uuid.UUID(o.item_id)) for o in outcomes if not o.ok]
        await asyncio.to_thread(
            repo.transition_kernels,
            failed,
            KernelStatus.ERROR,
            NON_TERMINAL_KERNEL,
            status_info=FAILED_TO_START,
        )
        failed_sessions = session_ids_of(o for o in outcomes if not o.ok)
        return await _fail_sessions(repo, sorted(failed_sessions), FAILED_TO_START)

    return HandlerSpec(
        START_SESSIONS, "LOCKID_SOKOVAN_START_SESSIONS", plan, {Operation.CREATE_KERNELS: complete}
    )


async def apply_created(repo: SchedulerRepository, outcomes: Sequence[ItemOutcome]) -> None:
    """Created kernels go RUNNING, and sessions whose kernels all run go RUNNING too.

    Idempotent: an agent's task applies its own outcomes as soon as it has them, so a
    session does not wait for the run's other agents; the run's completion applies every
    outcome again and alone deals with failures.
    """
    created = {
        KernelId(uuid.UUID(o.item_id)): {"container_id": _container_id(o)}
        for o in outcomes
        if o.ok and not o.skipped
    }
    await asyncio.to_thread(
        repo.transition_kernels_with_values, created, KernelStatus.RUNNING, [KernelStatus.CREATING]
    )
    await _promote(
        repo,
        session_ids_of(outcomes) - session_ids_of(o for o in outcomes if not o.ok),
        KernelStatus.RUNNING,
        SessionStatus.CREATING,
        SessionStatus.RUNNING,
    )


def _container_id(outcome: ItemOutcome) -> str:
    info = outcome.detail.get("creation_info") or {}
    return str(info.get("container_id") or "")


async def _expire_creating(repo: SchedulerRepository, start_timeout: float) -> FollowUps:
    """Sessions stuck in CREATING well past the start timeout are given up and cleaned up."""
    sessions = await asyncio.to_thread(repo.sessions_in, [SessionStatus.CREATING])
    cutoff = utcnow() - timedelta(seconds=max(2 * start_timeout, 30.0))
    stuck = [
        s.id for s in sessions if s.status_changed_at is not None and s.status_changed_at < cutoff
    ]
    for sid in stuck:
        log.warning("session %s stuck in CREATING past the start timeout; terminating", sid)
        info = {
            "src": "other",
            "name": "CreationTimeout",
            "message": f"no kernel creation result within {start_timeout}s",
        }
        await asyncio.to_thread(repo.merge_session_status_data, sid, {"error": info})
    return await _fail_sessions(repo, stuck, CREATION_TIMEOUT)
