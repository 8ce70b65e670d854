"""`sokovan.sessions.create` and `sokovan.sessions.terminate`: many sessions in one message,
each answered (or refused) alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sokovan.admission.parse import keywords, parse_call, parse_create, validate
from sokovan.admission.refusal import Refusal, from_error, refusal_answer
from sokovan.admission.schemas import CreateSessionsPayload, Limits, TerminateSessionsPayload
from sokovan.errors import InvalidRequest, NotFound, SokovanError
from sokovan.ports import SchedulerStore, SecretBinder
from sokovan.records import SessionRequest
from sokovan.scheduler.coordinator import Coordinator
from sokovan.scheduler.handlers import pull_images, schedule_sessions
from sokovan.scheduler.handlers import terminate_sessions as terminate_handler
from sokovan.scheduler.transitions import request_termination
from sokovan.types import JSON, RunTrigger, SessionId, SessionStatus, utcnow


async def create_sessions(
    repo: SchedulerStore,
    coordinator: Coordinator,
    limits: Limits,
    secrets: SecretBinder | None,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> JSON:
    """Stores the valid requests (placed, or PENDING); one pull run for all the placed ones."""
    given = keywords(["requests"], args, kwargs)
    if isinstance(given, Refusal):
        return refusal_answer("sessions create", given)
    payload = validate(CreateSessionsPayload, given, limits)
    if isinstance(payload, Refusal):
        return refusal_answer("sessions create", payload)
    parsed = [parse_create(r, limits) for r in payload.requests]
    valid = [p for p in parsed if isinstance(p, SessionRequest)]
    stored = iter(await repo.submit_sessions(valid, secrets))
    sessions: list[JSON] = []
    refused: list[JSON] = []
    for index, item in enumerate(parsed):
        result = item if isinstance(item, Refusal) else next(stored)
        if isinstance(result, Refusal):
            refused.append({"index": index, **result.to_json()})
        elif isinstance(result, SokovanError):
            field = result.field if isinstance(result, InvalidRequest) else None
            refused.append({"index": index, **from_error(result, field).to_json()})
        else:
            sessions.append({"session_id": str(result.session_id), "status": str(result.status)})
    placed = [s["session_id"] for s in sessions if s["status"] == str(SessionStatus.SCHEDULED)]
    run_id = None
    if placed:
        report = await coordinator.run(pull_images.NAME, RunTrigger.API, placed)
        run_id = report.run_id
    return {"sessions": sessions, "refused": refused, "pull_run_id": run_id}


async def terminate_sessions(
    repo: SchedulerStore, coordinator: Coordinator, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> JSON:
    """Ends every named session as `sokovan.session.terminate` ends one, together. Each id
    gets the single task's answer, in the order sent; an unknown id is refused alone."""
    payload = parse_call(TerminateSessionsPayload, args, kwargs)
    if isinstance(payload, Refusal):
        return refusal_answer("sessions terminate", payload)
    sids = [SessionId(u) for u in payload.session_ids]
    ending = await end_sessions(repo, coordinator, sids, payload.reason, force=payload.force)
    answers: list[JSON] = []
    refused: list[JSON] = []
    for index, sid in enumerate(sids):
        answer = ending.answer(sid)
        if answer is None:
            error = from_error(ending.unknown(sid), f"session_ids[{index}]")
            refused.append({"index": index, **error.to_json()})
        else:
            answers.append(answer)
    return {"sessions": answers, "refused": refused, "run_id": ending.run_id}


@dataclass(frozen=True)
class Ending:
    """What ending some sessions did to each of them."""

    known: Mapping[SessionId, SessionStatus]  # as they were found
    cancelled: frozenset[SessionId]
    terminating: frozenset[SessionId]  # ended by the run `run_id`
    now: Mapping[SessionId, SessionStatus]  # the others, as they are now
    run_id: int | None
    force: bool

    def answer(self, sid: SessionId) -> JSON | None:
        """The task's answer for one session; None for a session that does not exist."""
        if sid not in self.known:
            return None
        answer: JSON = {"session_id": str(sid)}
        if sid in self.cancelled:
            status, note = SessionStatus.CANCELLED, "cancelled while PENDING; no agent was called"
        elif sid in self.terminating:
            return {**answer, "terminating": True, "run_id": self.run_id, "force": self.force}
        else:
            status = self.now.get(sid, self.known[sid])
            note = f"session is {status}; nothing to do"
        return {**answer, "terminating": False, "status": str(status), "note": note}

    @staticmethod
    def unknown(sid: SessionId) -> NotFound:
        return NotFound(f"no session with id {sid}")


async def end_sessions(
    repo: SchedulerStore,
    coordinator: Coordinator,
    sids: Sequence[SessionId],
    reason: str,
    *,
    force: bool,
) -> Ending:
    """The one way sessions are ended on request: the PENDING ones cancelled in one
    transaction (and their queues run once), the live ones moved to TERMINATING at once and
    ended by one terminate run; `force` gives up at once what cannot be destroyed."""
    unique = list(dict.fromkeys(sids))
    known = {s.id: s.status for s in await repo.sessions_by_ids(unique)}
    pending = [s for s in unique if known.get(s) == SessionStatus.PENDING]
    cancelled = set(await repo.cancel_pending(pending, reason)) if pending else set()
    if cancelled:
        # The cancelled sessions may have held the head of their queues.
        await coordinator.run(schedule_sessions.NAME, RunTrigger.API)
    # A PENDING session placed before its cancel is ended as a live one.
    live = [s for s in unique if s in known and s not in cancelled]
    moved = set(await request_termination(repo, live, reason)) if live else set()
    now = {s.id: s.status for s in await repo.sessions_by_ids([s for s in live if s not in moved])}
    terminating = [
        s for s in live if s in moved or (force and now.get(s) == SessionStatus.TERMINATING)
    ]
    if force and terminating:
        # The TERMINATING deadline is now (one transaction for all): what cannot be destroyed
        # is given up at once.
        await repo.bring_deadlines_forward(terminating, utcnow())
    run_id = None
    if terminating:
        scope = [str(s) for s in terminating]
        run_id = (await coordinator.run(terminate_handler.NAME, RunTrigger.API, scope)).run_id
    return Ending(
        known, frozenset(cancelled), frozenset(terminating), now, run_id=run_id, force=force
    )
