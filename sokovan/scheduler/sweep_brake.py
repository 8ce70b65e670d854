"""The sweep's brake on mass kills: hold on an outage, reap at a bounded rate on a mass death.

Most kernels of a group looking stale at once is either an outage of presence (the kernels
run; nobody may kill them) or a mass death (every agent restarted and their kernels died with
them). Only the agents can tell the two apart, so above the stale ratio the sweep still asks
them. Kernels their agent confirms dead are reaped at most a share of the group per run (as
Kubernetes limits evictions per second), so a mass of wrong answers costs a bounded share
per sweep interval; when no agent confirms one dead, or none could be asked, the run holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sokovan.scheduler.terminator import KernelEvidence, StaleJudgement
from sokovan.types import KernelId


@dataclass(frozen=True, slots=True)
class RatioBrake:
    """When too many kernels look stale at once, and how many a braked run may reap."""

    max_stale_ratio: float
    min_kernels: int
    # Share of the group's kernels a braked run may reap; 0: a braked run reaps nothing.
    reap_share: float

    def engaged(self, judgement: StaleJudgement) -> str | None:
        """Why this run is braked, when too many kernels look stale at once; else None."""
        if judgement.total < self.min_kernels:
            return None
        if judgement.stale_ratio <= self.max_stale_ratio:
            return None
        return (
            f"{len(judgement.candidates)} of {judgement.total} kernels look stale,"
            f" above the ratio {self.max_stale_ratio}"
        )

    def allowance(self, total: int) -> int:
        """Kernels a braked run of a group of `total` may reap: its share, at least one."""
        if self.reap_share <= 0 or total <= 0:
            return 0
        return max(1, math.floor(self.reap_share * total))


@dataclass(frozen=True, slots=True)
class BrakedVerdict:
    """What a braked run does after asking the agents: reap some, or hold with a reason."""

    reap: tuple[KernelId, ...] = ()
    # Confirmed dead, left for a later run by the rate.
    deferred: tuple[KernelId, ...] = ()
    hold: str | None = None
    note: str = ""


def judge_braked(brake: str, judgement: StaleJudgement, allowance: int) -> BrakedVerdict:
    """The confirmed dead, first `allowance` of them reaped; a hold when none is confirmed."""
    dead = [e.kernel_id for e in judgement.candidates if e.dead]
    if not dead:
        return BrakedVerdict(hold=f"{brake}: presence outage suspected; {_why_none(judgement)}")
    reap, deferred = tuple(dead[:allowance]), tuple(dead[allowance:])
    note = (
        f"{brake}: reaping at most {allowance} per run of the {len(dead)} their agents"
        f" confirm dead; {len(deferred)} left for the next runs"
    )
    return BrakedVerdict(reap, deferred, None, note)


def _why_none(judgement: StaleJudgement) -> str:
    asked: list[KernelEvidence] = [e for e in judgement.candidates if e.alive]
    if not asked:
        return "no agent could be asked"
    return f"their agents report {len(asked)} of them running and none dead"
