"""The public tasks' bodies: validate, act, answer JSON; expected refusals are results."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from sokovan.admission.batch import end_sessions
from sokovan.admission.parse import (
    parse_create_call,
    parse_run_handler,
    parse_terminate,
    parse_touch,
)
from sokovan.admission.refusal import Refusal, from_error, refusal_answer
from sokovan.admission.schemas import Limits
from sokovan.config import Settings
from sokovan.errors import InvalidRequest, NotFound, SokovanError
from sokovan.ports import ActivityStore, SchedulerStore, SecretBinder
from sokovan.scheduler.agents import sync_agents
from sokovan.scheduler.coordinator import Coordinator
from sokovan.scheduler.handlers import pull_images, schedule_sessions
from sokovan.types import JSON, RunTrigger, SessionId, SessionStatus, utcnow

log = logging.getLogger(__name__)


class PublicTasks:
    """What `sokovan.session.*` and `sokovan.handler.run` do, given their raw arguments."""

    def __init__(
        self,
        repository: SchedulerStore,
        coordinator: Coordinator,
        settings: Settings,
        secrets: SecretBinder | None = None,
        activity: ActivityStore | None = None,
    ) -> None:
        self.repository = repository
        # Where sokovan.session.touch records activity (reclaim); None refuses touches.
        self.activity = activity
        self.coordinator = coordinator
        # Where submissions store secret variables (encrypted); None refuses them.
        self.secrets = secrets
        self.limits = Limits(
            max_kernels=settings.max_kernels_per_session,
            handlers=frozenset(coordinator.handlers),
        )

    async def create_session(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> JSON:
        """Stores a valid request (placed, or PENDING); placed sessions start pulling at once."""
        request = parse_create_call(args, kwargs, self.limits)
        if isinstance(request, Refusal):
            return refusal_answer("session create", request)
        try:
            submitted = await self.repository.submit_session(request, self.secrets)
        except InvalidRequest as e:
            return refusal_answer("session create", from_error(e, e.field))
        sid = str(submitted.session_id)
        if submitted.status == SessionStatus.PENDING:
            log.info("session %s PENDING at position %s", sid, submitted.queue_position)
            return {
                "session_id": sid,
                "status": str(submitted.status),
                "queue_position": submitted.queue_position,
            }
        report = await self.coordinator.run(pull_images.NAME, RunTrigger.API, [sid])
        return {"session_id": sid, "status": str(submitted.status), "pull_run_id": report.run_id}

    async def terminate_session(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> JSON:
        """Cancels a PENDING session, or moves a live one to TERMINATING and terminates it."""
        payload = parse_terminate(args, kwargs)
        if isinstance(payload, Refusal):
            return refusal_answer("session terminate", payload)
        sid = SessionId(payload.session_id)
        ending = await end_sessions(
            self.repository, self.coordinator, [sid], payload.reason, force=payload.force
        )
        answer = ending.answer(sid)
        if answer is None:
            error = from_error(ending.unknown(sid), "session_id")
            return refusal_answer("session terminate", error)
        return answer

    async def touch_session(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> JSON:
        """Records the manager's report that a session is in use now (its idle clock restarts)."""
        payload = parse_touch(args, kwargs)
        if isinstance(payload, Refusal):
            return refusal_answer("session touch", payload)
        sid = SessionId(payload.session_id)
        try:
            session = await self.repository.get_session(sid)
        except NotFound as e:
            return refusal_answer("session touch", from_error(e, "session_id"))
        if self.activity is None:
            raise SokovanError("no activity store: this worker cannot record touches")
        now = utcnow()
        await self.activity.touch({sid: now})
        return {
            "session_id": str(sid),
            "status": str(session.status),
            "touched_at": now.isoformat(),
        }

    async def sync_agents(self, redis: Redis) -> JSON:
        """Copies agents' registrations; an agent that joined gets the pending queue a run."""
        before = await self._alive()
        counts = await sync_agents(redis, self.repository)
        joined = await self._alive() - before
        pending = await self.repository.pending_count() if joined else 0
        if pending:
            await self.coordinator.run(schedule_sessions.NAME, RunTrigger.EVENT)
        return dict(counts)

    async def _alive(self) -> set[str]:
        return {a.id for a in await self.repository.list_agents() if a.status == "ALIVE"}

    async def run_handler(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> JSON:
        """Starts one run of a handler with the trigger, scope and budget given."""
        payload = parse_run_handler(args, kwargs, self.limits)
        if isinstance(payload, Refusal):
            return refusal_answer("handler run", payload)
        scope = None if payload.scope is None else [str(x) for x in payload.scope]
        try:
            report = await self.coordinator.run(
                payload.handler, RunTrigger(payload.trigger), scope, payload.budget
            )
        except SokovanError as e:
            return refusal_answer("handler run", from_error(e, "handler"))
        return {
            "handler": payload.handler,
            "run_id": report.run_id,
            "status": str(report.status),
            "note": report.note,
        }
