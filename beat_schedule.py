"""Periodic entries: name -> task, interval and expiry (a backlog never piles up stale ticks)."""

from __future__ import annotations

from typing import Any

from sokovan.config import Settings


def _handler(name: str, every: float) -> dict[str, Any]:
    return {
        "task": "sokovan.handler.run",
        "schedule": every,
        "kwargs": {"handler": name, "trigger": "beat"},
        # A tick not started within its own interval is dropped; the next one replaces it.
        "options": {"expires": max(every, 1.0)},
    }


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The beat schedule for these settings."""
    every_agent_sync = max(settings.presence_refresh / 2, 1.0)
    return {
        "sync-agents": {
            "task": "sokovan.agents.sync",
            "schedule": every_agent_sync,
            "options": {"expires": every_agent_sync},
        },
        "terminate-sessions": _handler("terminate_sessions", settings.terminate_interval),
        "sweep-stale-kernels": _handler("sweep_stale_kernels", settings.sweep_interval),
        "pull-images": _handler("pull_images", settings.launch_interval),
        "start-sessions": _handler("start_sessions", settings.launch_interval),
        "recover-runs": {
            "task": "sokovan.maintenance.recover",
            "schedule": settings.recover_interval,
            "options": {"expires": settings.recover_interval},
        },
        "prune-runs": {
            "task": "sokovan.maintenance.prune",
            "schedule": settings.prune_interval,
            "options": {"expires": settings.prune_interval},
        },
    }
