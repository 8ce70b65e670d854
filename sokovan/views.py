"""The JSON documents of sessions and runs, as the CLI's `--json` prints them and the public
read tasks (`sokovan.session.get`, `sokovan.session.list`, `sokovan.run.get`) answer them.

Field names are stable (README, "JSON output"); datetimes are ISO 8601 strings in UTC.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sokovan.config import Settings
from sokovan.db.ledger import RunLedger
from sokovan.db.listing import list_sessions
from sokovan.db.repository import SchedulerRepository
from sokovan.scheduler.deadlines import deadline_of
from sokovan.scheduler.handlers import state_deadlines
from sokovan.types import KernelStatus, RunId, RunItemRecord, RunRecord, SessionId

JSON = dict[str, Any]


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def session_document(repo: SchedulerRepository, sid: SessionId, settings: Settings) -> JSON:
    """A session with its kernels and error info (`session show --json`); raises NotFound.

    `deadline_at` says when the session's current state gives up (as `settings` bound it),
    each kernel's failed destroy attempts and last error why it has not ended yet.
    """
    s = repo.get_session(sid)
    kernels = [
        {
            "id": str(k.id),
            "hostname": k.cluster_hostname,
            "agent": k.agent_id,
            "status": str(k.status),
            "image": k.image,
            "occupied_slots": k.occupied_slots.to_json(),
            "attempts": int(k.status_data.get("attempts") or 0),
            "last_error": k.status_data.get("last_error"),
        }
        for k in s.kernels
    ]
    seconds = state_deadlines(settings).get(s.status)
    return {
        "id": str(s.id),
        "name": s.name,
        "status": str(s.status),
        "status_info": s.status_info,
        "cluster_mode": str(s.cluster_mode),
        "network_type": str(s.network_type),
        "network_id": s.network_id,
        "error": s.status_data.get("error"),
        "deadline_at": None if seconds is None else iso(deadline_of(s, seconds)),
        "kernels": kernels,
    }


def failing_kernel(doc: JSON) -> str | None:
    """What holds a session document's kernels up: the first TERMINATING kernel with a failed
    destroy, as one line; None when none has failed."""
    for k in doc["kernels"]:
        if k["last_error"] and k["status"] == str(KernelStatus.TERMINATING):
            error = " ".join(str(k["last_error"]).split())  # one line, whatever the agent said
            return (
                f"kernel {k['id']} on {k['agent']}: {k['attempts']} failed destroy attempt(s),"
                f" the last: {error}"
            )
    return None


def session_list_document(
    repo: SchedulerRepository,
    *,
    statuses: Collection[str] = (),
    agent: str | None = None,
    limit: int = 50,
) -> JSON:
    """Sessions newest first with totals (`session list --json`)."""
    page = list_sessions(repo.engine, statuses=statuses, agent=agent, limit=limit)
    queue = repo.queue_positions()
    rows = [
        {
            "id": str(s.id),
            "name": s.name,
            "status": s.status,
            "status_info": s.status_info,
            "scaling_group": s.scaling_group,
            "created_at": iso(s.created_at),
            "status_changed_at": iso(s.status_changed_at),
            "kernels": s.kernels,
            "agents": s.agents,
            "queue_position": queue.get(SessionId(s.id)),
        }
        for s in page.items
    ]
    return {"sessions": rows, "total": page.total, "more": page.more}


def run_json(r: RunRecord) -> JSON:
    """A run's stable JSON fields (`runs list --json`)."""
    return {
        "id": int(r.id),
        "handler": r.handler,
        "trigger": r.trigger,
        "status": str(r.status),
        "requested": r.requested,
        "succeeded": r.succeeded,
        "failed": r.failed,
        "skipped": r.skipped,
        "started_at": iso(r.started_at),
        "finished_at": iso(r.finished_at),
        "duration": r.duration,
        "fanout_id": r.fanout_id,
        "error": r.error,
        "note": r.note,
        "scope": r.scope,
    }


def item_json(i: RunItemRecord) -> JSON:
    """A run item's stable JSON fields."""
    result = "skipped" if i.skipped else ("ok" if i.ok else "failed")
    return {
        "item_id": i.item_id,
        "agent_id": i.agent_id,
        "result": result,
        "duration": i.duration,
        "error": i.error,
        "evidence": i.evidence,
    }


def run_document(ledger: RunLedger, run_id: RunId, items_limit: int = 0) -> JSON:
    """A run with its counts and items (`runs show --json`); raises NotFound.

    With `items_limit` the first that many items are given and `items_more` says how many
    were left out.
    """
    r = ledger.get_run(run_id)
    items = ledger.items(run_id, items_limit)
    more = ledger.item_count(run_id) - len(items) if items_limit else 0
    return {**run_json(r), "items": [item_json(i) for i in items], "items_more": more}
