"""Which RUNNING sessions a scaling group's reclaim policy takes back, and the brake on it.

A session past its policy's grace period is reclaimed when it has run longer than the
maximum lifetime (LIFETIME_EXCEEDED), or when every kernel reads idle and nothing was
active for the idle timeout (IDLE_TIMEOUT). A kernel reading busy is activity now, so a
busy session is never reclaimed as idle. Missing figures are never taken for idleness.

The brake (as the stale sweep's): when the figures are missing for every kernel of a group,
or more than the policy's share of the group would go at once, the group reclaims nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sokovan import constants as C
from sokovan.reclaim_policy import ReclaimPolicy
from sokovan.types import JSON, KernelId, SessionId, SessionInfo


@dataclass(frozen=True, slots=True)
class SessionJudgement:
    """One session's figures and what the policy makes of them."""

    session_id: SessionId
    reason: str | None  # LIFETIME_EXCEEDED, IDLE_TIMEOUT, or None: kept
    busy: bool
    evidence: JSON


@dataclass(frozen=True, slots=True)
class GroupJudgement:
    """A scaling group's sessions judged; `held` says why the brake holds the group."""

    scaling_group: str
    policy: ReclaimPolicy
    sessions: Sequence[SessionJudgement]
    held: str | None = None
    busy: Sequence[SessionId] = field(default_factory=tuple)

    @property
    def reclaim(self) -> list[SessionJudgement]:
        return [s for s in self.sessions if s.reason is not None]


def judge_session(
    policy: ReclaimPolicy,
    session: SessionInfo,
    utilization: Mapping[KernelId, float],
    stamp: datetime | None,
    now: datetime,
) -> SessionJudgement:
    """The session kept or reclaimed, with the figures read."""
    started = session.status_changed_at or now
    age = (now - started).total_seconds()
    figures = {str(k.id): utilization.get(k.id) for k in session.kernels}
    read = [v for v in figures.values() if v is not None]
    busy = any(v >= policy.idle_threshold for v in read)
    complete = bool(figures) and len(read) == len(figures)
    last = max([started, *([stamp] if stamp else []), *([now] if busy else [])])
    idle_for = (now - last).total_seconds()
    reason = None
    if age < policy.grace_period:
        reason = None
    elif policy.max_lifetime and age >= policy.max_lifetime:
        reason = C.LIFETIME_EXCEEDED_REASON
    elif policy.idle_timeout and complete and not busy and idle_for >= policy.idle_timeout:
        reason = C.IDLE_TIMEOUT_REASON
    evidence: JSON = {
        "policy": policy.to_json(),
        "scaling_group": session.scaling_group,
        "age_sec": round(age, 3),
        "started_at": started.isoformat(),
        "last_activity": last.isoformat(),
        "idle_sec": round(idle_for, 3),
        "cpu_util_pct": figures,
        "busy": busy,
    }
    return SessionJudgement(session.id, reason, busy, evidence)


def judge_group(
    scaling_group: str,
    policy: ReclaimPolicy,
    sessions: Sequence[SessionInfo],
    utilization: Mapping[KernelId, float],
    stamps: Mapping[SessionId, datetime],
    now: datetime,
) -> GroupJudgement:
    """Every session of the group judged, and whether the brake holds the group."""
    judged = [judge_session(policy, s, utilization, stamps.get(s.id), now) for s in sessions]
    busy = tuple(j.session_id for j in judged if j.busy)
    kernels = [k.id for s in sessions for k in s.kernels]
    held = None
    if policy.idle_timeout and kernels and not any(k in utilization for k in kernels):
        held = (
            f"{scaling_group}: utilization data missing for all {len(kernels)} kernel(s);"
            " reclaiming nothing"
        )
    else:
        wanted = sum(1 for j in judged if j.reason is not None)
        allowance = max(1, math.floor(policy.brake_share * len(judged)))
        if wanted > allowance:
            held = (
                f"{scaling_group}: {wanted} of {len(judged)} session(s) would be reclaimed at"
                f" once, above the brake share {policy.brake_share}; reclaiming nothing"
            )
    return GroupJudgement(scaling_group, policy, judged, held, busy)
