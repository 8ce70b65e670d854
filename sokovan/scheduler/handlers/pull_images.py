"""pull_images: SCHEDULED -> PULLING -> PREPARED, one check_and_pull task per agent."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sokovan import constants as C
from sokovan.config import Settings
from sokovan.db.attempts import backoff_seconds
from sokovan.ports import SchedulerStore
from sokovan.scheduler.deadlines import parse_time, past_deadline
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
from sokovan.scheduler.launcher.agent_jobs import pull_images_on_agent
from sokovan.scheduler.transitions import (
    FAILED_TO_START,
    fail_sessions,
    move_sessions,
    parse_ids,
    promote_sessions,
    session_ids_of,
)
from sokovan.types import (
    AgentId,
    ItemOutcome,
    KernelStatus,
    Operation,
    RunId,
    SessionId,
    SessionInfo,
    SessionStatus,
    Verdict,
    utcnow,
)

if TYPE_CHECKING:
    from sokovan.scheduler.launcher import SessionLauncher

log = logging.getLogger(__name__)

NAME = "pull_images"
START_SESSIONS = "start_sessions"


async def pull_on_agent(
    ctx: HandlerContext, agent_id: AgentId, items: Sequence[Mapping[str, Any]]
) -> list[ItemOutcome]:
    """check_and_pull once for one agent's images."""
    return await pull_images_on_agent(ctx.pool, agent_id, items)


# A pull that failed with one of these got no answer from the agent: it is tried again.
NO_ANSWER = ("AgentTimeout", "AgentUnavailable", "TimeoutError")
RETRY_AT = "pull_retry_at"
SENT_AT = "pull_sent_at"
ATTEMPTS = "pull_attempts"


def _due(session: SessionInfo, now: datetime) -> bool:
    """A PULLING session to pull again now: its retry is due, or its pull was lost.

    Runs of this handler never overlap (one claim), and a run that ends gives each of its
    sessions a way on (PREPARED, a retry time, or failure). So a PULLING session with no
    retry time, seen while this run plans, was left by a run that died or lost its messages:
    it is pulled again at once, and the lost pull costs no attempt.
    """
    retry_at = parse_time(session.status_data.get(RETRY_AT))
    return retry_at is None or retry_at <= now


class PullImages:
    """Pulls the images of new sessions, and again for pulls that got no answer or were lost."""

    def __init__(self, repo: SchedulerStore, launcher: SessionLauncher, settings: Settings) -> None:
        self.repo = repo
        self.launcher = launcher
        self.settings = settings
        assert DECLARATION.give_up is not None
        self.deadline = DECLARATION.give_up.deadline(settings)
        self.attempts = DECLARATION.give_up.attempts(settings)

    async def plan(self, run_id: RunId, scope: Sequence[str] | None, budget: int) -> Plan:
        """New sessions go PULLING; they and the due retries get one check_and_pull each."""
        new, pulling = DECLARATION.targets.sessions
        only = parse_ids(scope)
        wanted = None if only is None else [SessionId(u) for u in only]
        # Read before this run moves new sessions to PULLING: those are not lost pulls.
        follow, retried = await self._retries(pulling, wanted)
        sessions = await self.repo.sessions_in([new], limit=budget, only=wanted)
        sessions = await move_sessions(self.repo, sessions, pulling, KernelStatus.PULLING, new)
        sessions.extend(retried)
        if not sessions:
            return Plan(requested=0, follow_ups=follow)
        now = utcnow().isoformat()
        sent = {SENT_AT: now, RETRY_AT: None}
        # Together: the store writes what arrives at once in one transaction.
        await asyncio.gather(*(self.repo.merge_session_status_data(s.id, sent) for s in sessions))
        images = {k.image for s in sessions for k in s.kernels}
        configs = await self.repo.image_configs(images)
        await self.launcher.trigger_image_pulling(sessions, configs, run_id=run_id)
        requested = sum(len(s.kernels) for s in sessions)
        return Plan(requested=requested, dispatched=True, follow_ups=follow)

    async def _retries(
        self, pulling: SessionStatus, wanted: list[SessionId] | None
    ) -> tuple[FollowUps, list[SessionInfo]]:
        """PULLING sessions to pull again (a retry due, or a pull lost with its run); those
        whose pulls are all PREPARED already go on to creation, those past the deadline fail."""
        now = utcnow()
        again: list[SessionInfo] = []
        late: list[SessionId] = []
        for s in await self.repo.sessions_in([pulling], only=wanted):
            if not _due(s, now):
                continue
            if past_deadline(s, self.deadline, now):
                tried = int(s.status_data.get(ATTEMPTS) or 0) or 1
                message = f"no pull result within {self.deadline:g}s after {tried} attempt(s)"
                await _note_error(self.repo, s.id, message)
                late.append(s.id)
                continue
            kernels = tuple(k for k in s.kernels if k.status == KernelStatus.PULLING)
            if s.status_data.get(RETRY_AT) is None:
                log.warning(
                    "session %s: its pull was lost with the run that sent it; sent again", s.id
                )
            again.append(dataclasses.replace(s, kernels=kernels))
        follow = list(await fail_sessions(self.repo, late, FAILED_TO_START))
        follow.extend(await self._prepared({s.id for s in again if not s.kernels}))
        return follow, [s for s in again if s.kernels]

    async def _prepared(self, sessions: set[SessionId]) -> FollowUps:
        """Sessions whose kernels are all PREPARED go on to creation."""
        prepared = await promote_sessions(
            self.repo,
            sessions,
            KernelStatus.PREPARED,
            SessionStatus.PULLING,
            SessionStatus.PREPARED,
        )
        return [(START_SESSIONS, [str(s) for s in prepared])] if prepared else []

    async def complete(
        self, run_id: RunId, outcomes: Sequence[ItemOutcome], moved: Moved
    ) -> FollowUps:
        """Pulled sessions go PREPARED; unanswered pulls are retried; refusals fail them."""
        unanswered = [o for o in outcomes if not o.ok and (o.error or "").startswith(NO_ANSWER)]
        retry, exhausted = await _schedule_retries(
            self.repo, self.settings, self.attempts, unanswered
        )
        refused = [o for o in outcomes if not o.ok and o not in unanswered]
        failed_sessions = session_ids_of(refused)
        failed_sessions |= session_ids_of(unanswered) - retry
        # One error per failed session (its kernels share the agent's answer), not per kernel.
        for o in [*refused, *unanswered]:
            sid = SessionId(uuid.UUID(str(o.detail["session_id"])))
            if sid in failed_sessions and sid not in retry:
                tries = f" after {exhausted[sid]} attempt(s)" if sid in exhausted else ""
                await _note_error(self.repo, sid, _pull_error(o) + tries, name=_error_name(o))
        follow = list(await fail_sessions(self.repo, sorted(failed_sessions), FAILED_TO_START))
        follow.extend(await self._prepared(session_ids_of(outcomes) - failed_sessions - retry))
        return follow


def build(ctx: HandlerContext) -> HandlerRuntime:
    """Image pulling bound to its adapters."""
    handler = PullImages(ctx.repository, ctx.launcher(), ctx.settings)
    return HandlerRuntime(DECLARATION, handler.plan, {Operation.CHECK_AND_PULL: handler.complete})


async def _schedule_retries(
    repo: SchedulerStore, settings: Settings, attempts: int, unanswered: Sequence[ItemOutcome]
) -> tuple[set[SessionId], dict[SessionId, int]]:
    """Sessions whose pull got no answer: retried after a backoff while attempts are left
    (the first set), else out of attempts (with how many they had)."""
    errors = {SessionId(uuid.UUID(str(o.detail["session_id"]))): o for o in unanswered}
    sessions = await repo.sessions_by_ids(list(errors))
    retry: set[SessionId] = set()
    exhausted: dict[SessionId, int] = {}
    now = utcnow()
    for s in sessions:
        tried = int(s.status_data.get(ATTEMPTS) or 0) + 1
        if tried >= attempts:
            await repo.merge_session_status_data(s.id, {ATTEMPTS: tried})
            exhausted[s.id] = tried
            continue
        wait = backoff_seconds(tried, settings.retry_backoff, settings.retry_backoff_max)
        log.warning(
            "session %s: pull got no answer (%s); attempt %d of %d again in %.0fs",
            s.id,
            errors[s.id].error,
            tried,
            attempts,
            wait,
        )
        values = {
            ATTEMPTS: tried,
            RETRY_AT: (now + timedelta(seconds=wait)).isoformat(),
            "pull_last_error": _pull_error(errors[s.id]),
        }
        await repo.merge_session_status_data(s.id, values)
        retry.add(s.id)
    return retry, exhausted


def _error_name(o: ItemOutcome) -> str:
    return "ImagePullTimeout" if (o.error or "").startswith(NO_ANSWER) else "ImagePullFailed"


def _pull_error(o: ItemOutcome) -> str:
    """The agent's error, naming the image and the agent when it got no answer."""
    error = o.error or ""
    if not error.startswith(NO_ANSWER):
        return error
    return f"image {o.detail.get('image')!r} on agent {o.agent_id}: {error}"


async def _note_error(
    repo: SchedulerStore, sid: SessionId, message: str, name: str = "ImagePullTimeout"
) -> None:
    info = {"src": "agent", "name": name, "message": message}
    await repo.merge_session_status_data(sid, {"error": info})


DECLARATION = HandlerDeclaration(
    name=NAME,
    lock_id="LOCKID_SOKOVAN_PULL_IMAGES",
    description="pulls the images of SCHEDULED sessions, one task per agent",
    default_interval=C.LAUNCH_INTERVAL_SEC,
    interval_setting="launch_interval",
    # New sessions, and those whose pull is to be sent again: in this order.
    targets=Targets(sessions=(SessionStatus.SCHEDULED, SessionStatus.PULLING)),
    transitions={Verdict.OK: Transition(KernelStatus.PREPARED, (KernelStatus.PULLING,))},
    build=build,
    batches={Operation.CHECK_AND_PULL: pull_on_agent},
    give_up=GiveUp(
        state=SessionStatus.PULLING,
        deadline_setting="pulling_deadline",
        attempts_setting="pull_attempts",
        then=(
            "a pull with no answer, or no result by the deadline, is sent again up to the"
            " attempts; then the session fails with error info naming the image and agent"
        ),
    ),
)
