"""The way out of a transitional state: deadlines, attempt counts and giving a kernel up."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sokovan.types import ItemOutcome, KernelInfo, SessionInfo, Verdict

# Reasons (kernel status_info) of the deadline path; Backend.AI's names.
FORCE_TERMINATED = "FORCE_TERMINATED"
AGENT_LOST = "AGENT_LOST"
LOST_AGENT_STATUS = "LOST"


def parse_time(value: Any) -> datetime | None:
    """An ISO timestamp from status_data, or None."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def attempts_of(kernel: KernelInfo) -> int:
    return int(kernel.status_data.get("attempts") or 0)


def retry_due(kernel: KernelInfo, now: datetime) -> bool:
    """Whether a kernel whose last attempt failed may be tried again now (backoff)."""
    at = parse_time(kernel.status_data.get("next_attempt_at"))
    return at is None or at <= now


def deadline_of(session: SessionInfo, seconds: float) -> datetime | None:
    """When the session's time in its state runs out: a forced deadline, else the setting."""
    forced = parse_time(session.status_data.get("deadline_at"))
    if session.status_changed_at is None:
        return forced
    natural = session.status_changed_at + timedelta(seconds=seconds)
    return natural if forced is None else min(forced, natural)


def past_deadline(session: SessionInfo, seconds: float, now: datetime) -> bool:
    deadline = deadline_of(session, seconds)
    return deadline is not None and deadline <= now


def forced_outcome(
    kernel: KernelInfo,
    session: SessionInfo,
    *,
    state: str,
    seconds: float,
    agent_state: tuple[str, Any] | None,
) -> ItemOutcome:
    """The outcome of giving a kernel up past its session's deadline, with the evidence."""
    lost = agent_state is not None and agent_state[0] == LOST_AGENT_STATUS
    reason = AGENT_LOST if lost else FORCE_TERMINATED
    evidence: dict[str, Any] = {
        "session_id": str(session.id),
        "deadline": f"{state} deadline of {seconds:g}s passed",
        "attempts": attempts_of(kernel),
        "last_error": kernel.status_data.get("last_error"),
        "occupied_slots": kernel.occupied_slots.to_json(),
    }
    if agent_state is not None:
        evidence["agent_status"] = agent_state[0]
        evidence["agent_last_contact"] = _iso(agent_state[1])
    return ItemOutcome(
        str(kernel.id),
        kernel.agent_id,
        verdict=Verdict.LOST if lost else Verdict.FORCED,
        error=f"{reason}: {evidence['deadline']} after {evidence['attempts']} attempt(s)",
        detail=evidence,
    )


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


def attempt_detail(kernels: Mapping[str, KernelInfo], kernel_id: str) -> int:
    """The attempt number an item of this kernel is (1 for its first try)."""
    kernel = kernels.get(kernel_id)
    return 1 if kernel is None else attempts_of(kernel) + 1
