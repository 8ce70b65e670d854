"""`sokovan.sessions.create`: many requests in one message, each validated and refused alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sokovan.admission.parse import keywords, parse_create, validate
from sokovan.admission.refusal import Refusal, from_error
from sokovan.admission.schemas import CreateSessionsPayload, Limits
from sokovan.errors import InvalidRequest, SokovanError
from sokovan.ports import SchedulerStore, SecretBinder
from sokovan.records import SessionRequest
from sokovan.scheduler.coordinator import Coordinator
from sokovan.scheduler.handlers import pull_images
from sokovan.types import JSON, RunTrigger, SessionStatus


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
        return given.to_json()
    payload = validate(CreateSessionsPayload, given, limits)
    if isinstance(payload, Refusal):
        return payload.to_json()
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
