"""terminate_sessions: destroy the kernels of TERMINATING sessions, one task per agent."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sokovan.config import Settings
from sokovan.ports import SchedulerStore, SessionStore
from sokovan.records import Leftover
from sokovan.scheduler.deadlines import (
    AGENT_LOST,
    FORCE_TERMINATED,
    attempts_of,
    forced_outcome,
    past_deadline,
    retry_due,
)
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
from sokovan.scheduler.maintenance import DRAIN_HANDLER
from sokovan.scheduler.terminator import SessionTerminator
from sokovan.scheduler.transitions import (
    NON_TERMINAL_KERNEL,
    TERMINATE_HANDLER,
    finish_terminated_sessions,
    is_kernel_id,
    parse_ids,
    session_ids_of,
)
from sokovan.types import (
    TERMINAL_KERNEL_STATUSES,
    AgentId,
    ItemOutcome,
    KernelId,
    KernelInfo,
    KernelStatus,
    Operation,
    RunId,
    SessionId,
    SessionInfo,
    SessionStatus,
    Verdict,
    utcnow,
)

log = logging.getLogger(__name__)

NAME = TERMINATE_HANDLER
ALIVE = "ALIVE"
SCHEDULE_SESSIONS = "schedule_sessions"
LOCK_ID = "LOCKID_SOKOVAN_TERMINATE_SESSIONS"


async def destroy_on_agent(
    ctx: HandlerContext, agent_id: AgentId, items: Sequence[Mapping[str, Any]]
) -> list[ItemOutcome]:
    """One agent's destroy batch."""
    return await ctx.terminator.destroy_batch(agent_id, items)


@dataclass
class _Split:
    """A run's kernels: to destroy now, to give up on, and waiting for their retry."""

    sessions: list[SessionInfo] = field(default_factory=list)
    forced: list[ItemOutcome] = field(default_factory=list)
    never_created: list[ItemOutcome] = field(default_factory=list)
    leftovers: list[Leftover] = field(default_factory=list)
    waiting: int = 0


def _split(
    seconds: float,
    agent_states: Mapping[AgentId, tuple[str, Any]],
    live: Sequence[SessionInfo],
    now: datetime,
) -> _Split:
    """Past the deadline a kernel tried at least once is given up; a failed one waits."""
    out = _Split()
    for session in live:
        late = past_deadline(session, seconds, now)
        due = []
        for k in session.kernels:
            if not k.create_sent:
                out.never_created.append(_never_created(k))
                continue
            state = agent_states.get(k.agent_id) if k.agent_id else None
            # Tried at least once, or its agent is known not to be up: nothing to wait for.
            gone = state is not None and state[0] != ALIVE
            if k.agent_id and late and (attempts_of(k) >= 1 or gone):
                out.forced.append(
                    forced_outcome(
                        k,
                        session,
                        state="TERMINATING",
                        seconds=seconds,
                        agent_state=state,
                    )
                )
                lost = out.forced[-1].verdict == Verdict.LOST
                reason = AGENT_LOST if lost else FORCE_TERMINATED
                out.leftovers.append(Leftover(k.id, session.id, k.agent_id, reason, now, 0, None))
            elif attempts_of(k) and not retry_due(k, now):
                out.waiting += 1
            else:
                due.append(k)
        if due:
            out.sessions.append(dataclasses.replace(session, kernels=tuple(due)))
    return out


def _never_created(kernel: KernelInfo) -> ItemOutcome:
    """A kernel no create_kernels was ever sent for: ended without asking any agent."""
    return ItemOutcome(
        str(kernel.id),
        kernel.agent_id,
        verdict=Verdict.NEVER_CREATED,
        detail={
            "session_id": str(kernel.session_id),
            "never_created": "create_kernels was never sent for it: nothing to destroy",
        },
    )


class TerminateSessions:
    """Destroys the kernels of the declared sessions; gives up on them past the deadline."""

    def __init__(
        self, repo: SchedulerStore, terminator: SessionTerminator, settings: Settings
    ) -> None:
        self.repo = repo
        self.terminator = terminator
        self.settings = settings
        assert DECLARATION.give_up is not None
        self.deadline = DECLARATION.give_up.deadline(settings)

    async def plan(self, run_id: RunId, scope: Sequence[str] | None, budget: int) -> Plan:
        """Live kernels of the target sessions: destroyed, given up, or settled at once."""
        only = parse_ids(scope)
        sessions = await self.repo.sessions_to_destroy(
            DECLARATION.targets.sessions,
            limit=budget,
            only=None if only is None else [SessionId(u) for u in only],
        )
        live = [
            dataclasses.replace(
                s, kernels=tuple(k for k in s.kernels if k.status not in TERMINAL_KERNEL_STATUSES)
            )
            for s in sessions
        ]
        empty = [s.id for s in live if not s.kernels]
        if empty:
            await finish_terminated_sessions(self.repo, empty)
        targets = [s for s in live if s.kernels]
        states = await self.repo.agent_states(
            {k.agent_id for s in targets for k in s.kernels if k.agent_id}
        )
        split = _split(self.deadline, states, targets, utcnow())
        if split.forced:
            for o in split.forced:
                log.warning("run %s: kernel %s given up: %s", run_id, o.item_id, o.error)
            await self.repo.remember_leftovers(split.leftovers)
        settled = [*split.forced, *split.never_created]
        requested = sum(len(s.kernels) for s in split.sessions) + len(settled)
        if not split.sessions:
            return Plan(requested=requested, outcomes=settled, note=_note(empty, split))
        await self.terminator.terminate_sessions_for_handler(split.sessions, run_id=run_id)
        return Plan(requested=requested, dispatched=True, outcomes=settled)

    async def finish(
        self, run_id: RunId, outcomes: Sequence[ItemOutcome], moved: Moved
    ) -> FollowUps:
        """Sessions whose kernels are all terminal are TERMINATED."""
        await finish_terminated_sessions(self.repo, session_ids_of(outcomes))
        # Kernels given up freed their slots as well: the pending queue may fit now.
        return [(SCHEDULE_SESSIONS, None)] if any(moved.values()) else ()

    async def complete(
        self, run_id: RunId, outcomes: Sequence[ItemOutcome], moved: Moved
    ) -> FollowUps:
        """Ends finished sessions; failed destroys wait for their retry or the deadline."""
        finished = await finish_terminated_sessions(self.repo, session_ids_of(outcomes))
        failed = {
            KernelId(uuid.UUID(o.item_id)): o.error or "unknown error"
            for o in outcomes
            if not o.ok and not o.skipped and is_kernel_id(o.item_id)
        }
        if failed:
            await self.repo.note_kernel_attempts(
                failed, base=self.settings.retry_backoff, cap=self.settings.retry_backoff_max
            )
            log.warning(
                "run %s: %d kernel(s) not destroyed, left TERMINATING for a retry: %s",
                run_id,
                len(failed),
                ", ".join(str(k) for k in list(failed)[:20]),
            )
        log.info(
            "run %s: %d kernel(s) destroyed, %d session(s) terminated",
            run_id,
            len(moved.get(Verdict.OK, ())),
            len(finished),
        )
        follow = list(await _past_deadline_follow_up(self.repo, self.deadline, outcomes))
        if moved.get(Verdict.OK) or moved.get(Verdict.SKIPPED):
            # Destroyed kernels freed their slots: the pending queue may fit now.
            follow.append((SCHEDULE_SESSIONS, None))
        if moved.get(Verdict.OK) and await self._on_a_draining_agent(outcomes):
            # The agents' check marks a drain done once its agent is empty: now, not at its
            # next tick.
            follow.append((DRAIN_HANDLER, None))
        return follow

    async def _on_a_draining_agent(self, outcomes: Sequence[ItemOutcome]) -> bool:
        """Whether a kernel this run destroyed was on an agent being drained."""
        destroyed_on = {o.agent_id for o in outcomes if o.ok and not o.skipped and o.agent_id}
        if not destroyed_on:
            return False
        return any(a.id in destroyed_on for a in await self.repo.draining_agents())


def _note(empty: Sequence[SessionId], split: _Split) -> str | None:
    notes = [f"{len(empty)} session(s) had no live kernel"] if empty else []
    if split.forced:
        notes = [f"{len(split.forced)} kernel(s) given up past the deadline"]
    if split.never_created:
        notes.append(f"{len(split.never_created)} kernel(s) never created: no destroy")
    return "; ".join(notes) or None


def build(ctx: HandlerContext) -> HandlerRuntime:
    """The terminate handler bound to its adapters."""
    handler = TerminateSessions(ctx.repository, ctx.terminator, ctx.settings)
    return HandlerRuntime(
        DECLARATION,
        handler.plan,
        {Operation.DESTROY_KERNELS: handler.complete, None: handler.finish},
    )


async def _past_deadline_follow_up(
    repo: SessionStore, seconds: float, outcomes: Sequence[ItemOutcome]
) -> FollowUps:
    """Sessions whose destroy failed past their deadline are given up at once, not next tick."""
    failed = session_ids_of(o for o in outcomes if not o.ok and not o.skipped)
    if not failed:
        return ()
    now = utcnow()
    sessions = await repo.sessions_by_ids(list(failed))
    late = [
        str(s.id)
        for s in sessions
        if s.status == SessionStatus.TERMINATING and past_deadline(s, seconds, now)
    ]
    return [(NAME, late)] if late else ()


DECLARATION = HandlerDeclaration(
    name=NAME,
    lock_id=LOCK_ID,
    description="destroys the kernels of TERMINATING sessions, one task per agent",
    default_interval=5.0,
    interval_setting="terminate_interval",
    targets=Targets(sessions=(SessionStatus.TERMINATING,)),
    transitions={
        Verdict.OK: Transition(KernelStatus.TERMINATED, NON_TERMINAL_KERNEL),
        # A kernel that never had an agent has nothing to destroy.
        Verdict.SKIPPED: Transition(KernelStatus.CANCELLED, NON_TERMINAL_KERNEL),
        # A kernel no create was sent for has no container anywhere.
        Verdict.NEVER_CREATED: Transition(KernelStatus.CANCELLED, NON_TERMINAL_KERNEL),
        Verdict.FORCED: Transition(KernelStatus.TERMINATED, NON_TERMINAL_KERNEL, FORCE_TERMINATED),
        Verdict.LOST: Transition(KernelStatus.TERMINATED, NON_TERMINAL_KERNEL, AGENT_LOST),
    },
    build=build,
    batches={Operation.DESTROY_KERNELS: destroy_on_agent},
    give_up=GiveUp(
        state=SessionStatus.TERMINATING,
        deadline_setting="terminating_deadline",
        then=(
            "destroy is retried with backoff; past the deadline a kernel is TERMINATED"
            " (FORCE_TERMINATED, or AGENT_LOST on a lost agent), its slots freed and its"
            " container remembered for reconciliation"
        ),
    ),
)
