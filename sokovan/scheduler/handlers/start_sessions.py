"""start_sessions: PREPARED -> CREATING -> RUNNING, one create_kernels task per agent per run."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sokovan import constants as C
from sokovan.config import Settings
from sokovan.ports import FanOut, SchedulerStore
from sokovan.scheduler.deadlines import past_deadline
from sokovan.scheduler.handlers.base import (
    FollowUps,
    GiveUp,
    HandlerContext,
    HandlerDeclaration,
    HandlerRuntime,
    Moved,
    Plan,
    Targets,
    Transition,
)
from sokovan.scheduler.launcher.creation import create_kernels_on_agent
from sokovan.scheduler.transitions import (
    FAILED_TO_START,
    NON_TERMINAL_KERNEL,
    fail_sessions,
    move_sessions,
    parse_ids,
    promote_sessions,
    session_ids_of,
)
from sokovan.types import (
    AgentBatch,
    AgentId,
    ItemOutcome,
    KernelStatus,
    Operation,
    RunId,
    SessionId,
    SessionStatus,
    Verdict,
    utcnow,
)

if TYPE_CHECKING:
    from sokovan.scheduler.launcher import SessionLauncher

log = logging.getLogger(__name__)

NAME = "start_sessions"
CREATION_TIMEOUT = "CREATION_TIMEOUT"


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


async def create_on_agent(
    ctx: HandlerContext, agent_id: AgentId, items: Sequence[Mapping[str, Any]]
) -> list[ItemOutcome]:
    """create_kernels on one agent; the task records the created kernels RUNNING at once, in
    the transaction that records their outcomes (sokovan.scheduler.outcomes)."""
    return await create_kernels_on_agent(
        ctx.pool,
        ctx.secrets,
        agent_id,
        items,
        ctx.repository,
        start_timeout=ctx.settings.start_session_timeout,
        environs=ctx.environs,
        keys=ctx.keys,
    )


class StartSessions:
    """Creates the kernels of PREPARED sessions; fails those left CREATING by a lost run."""

    def __init__(
        self, repo: SchedulerStore, launch: Callable[[FanOut], SessionLauncher], fanout: FanOut,
        settings: Settings,
    ) -> None:  # fmt: skip
        self.repo = repo
        self.launch = launch
        self.fanout = fanout
        assert DECLARATION.give_up is not None
        self.deadline = DECLARATION.give_up.deadline(settings)

    async def plan(self, run_id: RunId, scope: Sequence[str] | None, budget: int) -> Plan:
        """PREPARED sessions go CREATING, one create_kernels per agent; what cannot be
        dispatched fails at once."""
        prepared, creating = DECLARATION.targets.sessions
        follow = list(await _expire_creating(self.repo, creating, self.deadline))
        only = parse_ids(scope)
        sessions = await self.repo.sessions_in(
            [prepared], limit=budget, only=None if only is None else [SessionId(u) for u in only]
        )
        sessions = await move_sessions(
            self.repo, sessions, creating, KernelStatus.CREATING, prepared
        )
        if not sessions:
            return Plan(requested=0, follow_ups=follow)
        configs = await self.repo.image_configs({k.image for s in sessions for k in s.kernels})
        dispatch_log = _DispatchLog(self.fanout)
        await self.launch(dispatch_log).start_sessions_for_handler(sessions, configs, run_id=run_id)
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
        follow.extend(await fail_sessions(self.repo, [s.id for s in undispatched], FAILED_TO_START))
        return Plan(
            requested=sum(len(s.kernels) for s in sessions),
            dispatched=True,
            outcomes=outcomes,
            follow_ups=follow,
        )

    async def complete(
        self, run_id: RunId, outcomes: Sequence[ItemOutcome], moved: Moved
    ) -> FollowUps:
        """Sessions whose kernels all run go RUNNING; failed ones go to termination."""
        # The batches moved the kernels, and each promoted the sessions it completed: this
        # finds the sessions whose kernels were spread over several agents.
        failed_sessions = session_ids_of(o for o in outcomes if not o.ok)
        await promote_sessions(
            self.repo,
            session_ids_of(outcomes) - failed_sessions,
            KernelStatus.RUNNING,
            SessionStatus.CREATING,
            SessionStatus.RUNNING,
        )
        return await fail_sessions(self.repo, sorted(failed_sessions), FAILED_TO_START)

    async def abandoned(self, run_id: RunId) -> FollowUps:
        """The lost batches' sessions would wait for the creation deadline: fail them now,
        so what their agents may have created is destroyed and nothing is created twice."""
        return await _fail_interrupted(self.repo)


def build(ctx: HandlerContext) -> HandlerRuntime:
    """Kernel creation bound to its adapters."""
    handler = StartSessions(ctx.repository, ctx.launcher, ctx.fanout, ctx.settings)
    return HandlerRuntime(
        DECLARATION,
        handler.plan,
        {Operation.CREATE_KERNELS: handler.complete},
        abandoned=handler.abandoned,
    )


def _container_id(outcome: ItemOutcome) -> str:
    info = outcome.detail.get("creation_info") or {}
    return str(info.get("container_id") or "")


async def _expire_creating(
    repo: SchedulerStore, creating: SessionStatus, deadline: float
) -> FollowUps:
    """Sessions in CREATING past the deadline fail; what was created is destroyed."""
    sessions = await repo.sessions_in([creating])
    now = utcnow()
    stuck = [s.id for s in sessions if past_deadline(s, deadline, now)]
    for sid in stuck:
        log.warning("session %s in CREATING past its %gs deadline; failing it", sid, deadline)
        info = {
            "src": "other",
            "name": "CreationTimeout",
            "message": f"no creation result arrived within the {deadline:g}s CREATING deadline",
        }
        await repo.merge_session_status_data(sid, {"error": info})
    return await fail_sessions(repo, stuck, CREATION_TIMEOUT)


async def _fail_interrupted(repo: SchedulerStore) -> FollowUps:
    """Every session still CREATING once the run creating it was abandoned (its worker lost)
    fails at once, so what its agents may have created is destroyed and nothing twice (a
    create still running on its agent is remembered as it is terminated: request_termination).
    """
    sessions = await repo.sessions_in([SessionStatus.CREATING])
    stuck = [s.id for s in sessions]
    for sid in stuck:
        log.warning("session %s left CREATING by an abandoned run; failing it", sid)
        info = {
            "src": "other",
            "name": "CreationInterrupted",
            "message": "the run creating it was abandoned (its worker was lost)",
        }
        await repo.merge_session_status_data(sid, {"error": info})
    return await fail_sessions(repo, stuck, CREATION_TIMEOUT)


DECLARATION = HandlerDeclaration(
    name=NAME,
    lock_id="LOCKID_SOKOVAN_START_SESSIONS",
    description="creates the kernels of PREPARED sessions, one task per agent per run",
    default_interval=C.LAUNCH_INTERVAL_SEC,
    interval_setting="launch_interval",
    # Sessions to create, and those being created: in this order.
    targets=Targets(sessions=(SessionStatus.PREPARED, SessionStatus.CREATING)),
    transitions={
        # Applied by the agent's own task as it records the outcome, so sessions do not
        # wait for the run's other agents.
        Verdict.OK: Transition(
            KernelStatus.RUNNING,
            (KernelStatus.CREATING,),
            values=lambda o: {"container_id": _container_id(o)},
        ),
        Verdict.FAILED: Transition(KernelStatus.ERROR, NON_TERMINAL_KERNEL, FAILED_TO_START),
    },
    build=build,
    batches={Operation.CREATE_KERNELS: create_on_agent},
    give_up=GiveUp(
        state=SessionStatus.CREATING,
        deadline_setting="creating_deadline",
        then="the session fails (CREATION_TIMEOUT) and the kernels that were created are destroyed",
    ),
)
