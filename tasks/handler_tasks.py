"""Tasks a manager or beat sends by name: run a handler, terminate a session, maintenance."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sokovan.db.ledger import utcnow
from sokovan.errors import SokovanError
from sokovan.scheduler.agents import sync_agents
from sokovan.scheduler.handlers import pull_images, terminate_sessions
from sokovan.scheduler.submit import SessionRequest, submit_session
from sokovan.scheduler.transitions import request_termination
from sokovan.types import RunTrigger, SessionId, SessionStatus
from tasks import names
from tasks.base import task
from tasks.runtime import runtime

log = logging.getLogger(__name__)


@task(names.HANDLER_RUN)
def run_handler(
    handler: str, trigger: str = "manual", scope: list[str] | None = None, budget: int | None = None
) -> dict[str, Any]:
    """Starts one run of a handler (beat, manual, api or event trigger)."""
    rt = runtime()
    try:
        report = rt.run(rt.services.coordinator.run(handler, RunTrigger(trigger), scope, budget))
    except (SokovanError, ValueError) as e:
        log.warning("handler run refused: %s", e)
        return {"handler": handler, "error": str(e)}
    return {
        "handler": handler,
        "run_id": report.run_id,
        "status": str(report.status),
        "note": report.note,
    }


@task(names.SESSION_TERMINATE)
def terminate_session(
    session_id: str, reason: str = "USER_REQUESTED", force: bool = False
) -> dict[str, Any]:
    """Marks a session TERMINATING and starts the terminate handler for it.

    With `force`, the TERMINATING deadline is now: kernels whose agent is not up, or whose
    destroy fails once, are given up at once (FORCE_TERMINATED) instead of retried.
    """
    try:
        sid = SessionId(uuid.UUID(str(session_id)))
    except ValueError:
        return {
            "session_id": str(session_id)[:64],
            "error": "not a session id",
            "kind": "InvalidRequest",
            "field": "session_id",
        }
    rt = runtime()
    repo = rt.services.repository
    moved = rt.run(request_termination(repo, [sid], reason))
    status = repo.get_session(sid).status
    if not moved and not (force and status == SessionStatus.TERMINATING):
        return {
            "session_id": session_id,
            "terminating": False,
            "status": str(status),
            "note": f"session is {status}; nothing to do",
        }
    if force:
        repo.set_session_deadline(sid, utcnow())
    report = rt.run(
        rt.services.coordinator.run(terminate_sessions.NAME, RunTrigger.API, [str(sid)])
    )
    return {"session_id": session_id, "terminating": True, "run_id": report.run_id, "force": force}


@task(names.SESSION_CREATE)
def create_session(request: dict[str, Any]) -> dict[str, Any]:
    """Validates and stores a session, then starts image pulling for it at once."""
    rt = runtime()
    try:
        parsed = SessionRequest.from_json(request if isinstance(request, dict) else {})
        session_id = submit_session(rt.services.repository, parsed)
    except SokovanError as e:
        log.warning("session request refused: %s", e)
        return {"error": str(e), "kind": type(e).__name__}
    report = rt.run(
        rt.services.coordinator.run(pull_images.NAME, RunTrigger.API, [str(session_id)])
    )
    return {"session_id": str(session_id), "pull_run_id": report.run_id}


@task(names.AGENTS_SYNC)
def sync_agent_registry() -> dict[str, int]:
    """Copies agents' self-registrations into the agents table."""
    rt = runtime()
    return rt.run(sync_agents(rt.services.redis, rt.services.repository))


@task(names.MAINTENANCE_RECOVER)
def recover_runs() -> dict[str, Any]:
    """Abandons runs past their deadline so the next run re-plans their targets."""
    rt = runtime()
    return {"abandoned": [int(r) for r in rt.run(rt.services.coordinator.recover())]}


@task(names.MAINTENANCE_PRUNE)
def prune_runs() -> dict[str, int]:
    """Deletes runs older than the retention."""
    rt = runtime()
    days = rt.services.settings.run_retention_days
    return {"pruned": rt.run(rt.services.coordinator.prune(days))}
