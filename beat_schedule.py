"""Periodic entries: name -> task and interval (a backlog never piles up stale ticks).

Handler ticks come from the handler declarations, each under its handler's own task name
(`sokovan.handler.<name>`, readable in Flower); the rest are maintenance entries.
"""

from __future__ import annotations

from typing import Any

from sokovan import constants as C
from sokovan.config import Settings
from sokovan.scheduler.handlers import HANDLERS
from tasks import names


def _entry(task: str, every: float, **kwargs: Any) -> dict[str, Any]:
    return {
        "task": task,
        "schedule": every,
        "kwargs": kwargs,
        # A tick not started within its own interval is dropped by the task (a SUCCESS with a
        # note, not a REVOKED failure in Flower); the next one replaces it. See tasks.liveness.
        "options": {"headers": {C.TICK_EVERY_HEADER: max(every, 1.0)}},
    }


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The beat schedule for these settings."""
    every_agent_sync = max(settings.presence_refresh / 2, 1.0)
    schedule = {
        d.beat_entry: _entry(names.handler_task(d.name), d.interval(settings), trigger="beat")
        for d in HANDLERS
    }
    schedule["sync-agents"] = _entry(names.AGENTS_SYNC, every_agent_sync)
    schedule["recover-runs"] = _entry(names.MAINTENANCE_RECOVER, settings.recover_interval)
    schedule["prune-runs"] = _entry(names.MAINTENANCE_PRUNE, settings.prune_interval)
    schedule["refill-keypairs"] = _entry(names.KEYPAIRS_REFILL, settings.keypair_refill_interval)
    return schedule
