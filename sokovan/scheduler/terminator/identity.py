"""Is the agent that answers the one that hosts the kernel? Checked before a kill."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sokovan.errors import AgentRemoteError
from sokovan.types import AgentId, AgentIdentity

# The error a Backend.AI agent (and a reference agent) raises for a call addressed to an agent
# id it does not serve: whoever listens at that address is somebody else.
AGENT_ID_NOT_FOUND = "AgentIdNotFoundError"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answering agent's identity: None when it matches, else why not."""

    mismatch: str | None
    reported: Mapping[str, Any]


def judge_report(
    agent_id: AgentId, report: Mapping[str, Any], recorded: AgentIdentity | None
) -> Verdict:
    """Compares what the agent says about itself with what was recorded for `agent_id`.

    A real Backend.AI agent's health report names neither: then the agent id every call
    carries (which the agent checks) is the identity, and nothing here can mismatch.
    """
    reported = {k: report.get(k) for k in ("agent_id", "instance_id") if report.get(k)}
    said_id = reported.get("agent_id")
    if said_id is not None and str(said_id) != str(agent_id):
        return Verdict(f"the agent at this address is {said_id!r}, not {agent_id!r}", reported)
    said_instance = reported.get("instance_id")
    known = recorded.instance_id if recorded is not None else None
    if said_instance is not None and known is not None and str(said_instance) != known:
        return Verdict(
            f"agent {agent_id} answers as instance {said_instance!r}, recorded {known!r}",
            reported,
        )
    return Verdict(None, reported)


def hosted_by_earlier_instance(
    running_since: datetime | None, recorded: AgentIdentity | None
) -> str | None:
    """Why the current instance cannot vouch for a kernel that ran before it; None if it can."""
    if running_since is None or recorded is None or recorded.instance_since is None:
        return None
    if running_since >= recorded.instance_since:
        return None
    return (
        f"instance {recorded.instance_id!r} of agent {recorded.agent_id} started"
        f" {recorded.instance_since.isoformat()}, after the kernel ran; it never hosted it"
    )


def is_stranger_error(error: BaseException) -> bool:
    """Whether a failed call says the agent at the address is not the one addressed."""
    return isinstance(error, AgentRemoteError) and error.name == AGENT_ID_NOT_FOUND
