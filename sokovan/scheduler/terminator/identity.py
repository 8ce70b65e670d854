"""Is the agent that answers the one that hosts the kernel? Checked before a kill."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sokovan.errors import AgentRemoteError
from sokovan.types import AgentId

# The error a Backend.AI agent (and a reference agent) raises for a call addressed to an agent
# id it does not serve: whoever listens at that address is somebody else.
AGENT_ID_NOT_FOUND = "AgentIdNotFoundError"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answering agent's identity: None when it matches, else why not."""

    mismatch: str | None
    reported: Mapping[str, Any]


def judge_report(agent_id: AgentId, report: Mapping[str, Any]) -> Verdict:
    """Compares the agent id an agent reports for itself with the one addressed.

    An agent id is its node: a restart of the same id (a new instance marker) is the same
    node and speaks for its kernels. A real Backend.AI agent's health report names no id:
    then the agent id every call carries (which the agent checks) is the identity.
    """
    reported = {k: report.get(k) for k in ("agent_id", "instance_id") if report.get(k)}
    said_id = reported.get("agent_id")
    if said_id is not None and str(said_id) != str(agent_id):
        return Verdict(f"the agent at this address is {said_id!r}, not {agent_id!r}", reported)
    return Verdict(None, reported)


def is_stranger_error(error: BaseException) -> bool:
    """Whether a failed call says the agent at the address is not the one addressed."""
    return isinstance(error, AgentRemoteError) and error.name == AGENT_ID_NOT_FOUND


def reported_start(report: Mapping[str, Any]) -> datetime | None:
    """When the reporting agent instance started (`started_at`, epoch seconds); None if unsaid.

    A reference agent reports it on the presence store's clock; a real Backend.AI agent
    reports no instance and no start.
    """
    raw = report.get("started_at")
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    if not math.isfinite(raw) or raw <= 0:
        return None
    try:
        return datetime.fromtimestamp(raw, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
