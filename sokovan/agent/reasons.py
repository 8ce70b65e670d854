"""The kernel lifecycle reasons a Backend.AI agent accepts, and ours mapped onto them."""

from __future__ import annotations

from typing import Final

# The values of Backend.AI's KernelLifecycleEventReason (agent 26.9).
LIFECYCLE_REASONS: Final = frozenset(
    {
        "agent-termination",
        "already-terminated",
        "anomaly-detected",
        "exec-timeout",
        "failed-to-create",
        "failed-to-start",
        "force-terminated",
        "bootstrap-timeout",
        "hang-timeout",
        "idle-timeout",
        "idle-session-lifetime",
        "idle-utilization",
        "killed-by-event",
        "service-scaled-down",
        "new-container-started",
        "pending-timeout",
        "restarting",
        "restart-timeout",
        "resuming-agent-operation",
        "self-terminated",
        "task-failed",
        "task-timeout",
        "task-cancelled",
        "task-finished",
        "terminated-unknown-container",
        "unknown",
        "user-requested",
        "user-purged",
        "not-found-in-manager",
        "container-not-found",
    }
)
# Session-level reasons of this scheduler that have no lifecycle value of the same name.
_SYNONYMS: Final = {
    "abnormal-termination": "anomaly-detected",
    "stale-kernel": "anomaly-detected",
    "creation-timeout": "failed-to-start",
    "agent-lost": "force-terminated",
}


def lifecycle_reason(reason: str | None) -> str:
    """The agent-side reason for a termination reason ("USER_REQUESTED" -> "user-requested")."""
    text = (reason or "unknown").strip().lower().replace("_", "-")
    text = _SYNONYMS.get(text, text)
    return text if text in LIFECYCLE_REASONS else "unknown"
