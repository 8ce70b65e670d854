"""reclaim_sessions: RUNNING sessions past their group's maximum lifetime or idle for its idle
timeout go TERMINATING (LIFETIME_EXCEEDED / IDLE_TIMEOUT) through the normal terminate path.

Policies per scaling group come from SOKOVAN_RECLAIM_POLICIES, each group's replaced by one
set with `sokovan reclaim set` (sokovan.reclaim_policy), read afresh every run. Activity is
read from kernel utilization in Valkey (sokovan.activity). A group in report-only mode
records would-reclaim outcomes; a braked group (sokovan.scheduler.reclaim) reclaims nothing
and the run is `held`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

from sokovan import constants as C
from sokovan.config import Settings
from sokovan.ports import ActivityStore, SchedulerStore
from sokovan.reclaim_policy import ReclaimPolicy, effective_policies, policy_for
from sokovan.scheduler.handlers.base import (
    HandlerContext,
    HandlerDeclaration,
    HandlerRuntime,
    Plan,
    Targets,
)
from sokovan.scheduler.handlers.terminate_sessions import NAME as TERMINATE
from sokovan.scheduler.reclaim import GroupJudgement, SessionJudgement, judge_group
from sokovan.scheduler.transitions import parse_ids, request_termination
from sokovan.types import (
    ItemOutcome,
    RunId,
    SessionId,
    SessionInfo,
    SessionStatus,
    Verdict,
    utcnow,
)

log = logging.getLogger(__name__)

# A minute between runs: idle timeouts are minutes to hours, so a minute late is harmless.
RECLAIM_INTERVAL_SEC: Final = 60.0

NAME = "reclaim_sessions"
# Item errors: stable texts, so the metrics count them by kind.
RECLAIMED = "reclaimed"
WOULD_RECLAIM = "would reclaim"
BRAKED = "braked"


# A scaling group's policy and its RUNNING sessions.
_Group = tuple[ReclaimPolicy, list[SessionInfo]]


class ReclaimSessions:
    """Judges RUNNING sessions by their group's policy; terminates the reclaimed."""

    def __init__(
        self, repo: SchedulerStore, activity: ActivityStore | None, settings: Settings
    ) -> None:
        self.repo = repo
        self.activity = activity
        self.setting = settings.reclaim_policies

    async def plan(self, run_id: RunId, scope: Sequence[str] | None, budget: int) -> Plan:
        """One outcome per session to reclaim; the brake may hold a group."""
        # Read each run: a policy set with the CLI applies from the next run on.
        stored = await self.repo.stored_reclaim_policies()
        policies = effective_policies(self.setting, stored)
        if not policies:
            return Plan(requested=0)
        only = [SessionId(u) for u in parse_ids(scope) or []] if scope else None
        sessions = await self.repo.sessions_in([SessionStatus.RUNNING], limit=budget, only=only)
        groups: dict[str, _Group] = {}
        for s in sessions:
            policy = policy_for(policies, s.scaling_group)
            if policy is not None:
                groups.setdefault(s.scaling_group, (policy, []))[1].append(s)
        if not groups:
            return Plan(requested=0)
        judged = await self._judge(groups)
        outcomes: list[ItemOutcome] = []
        moved: list[SessionId] = []
        for group in judged:
            outcomes.extend(await self._act(group, moved))
        held = [g.held for g in judged if g.held]
        if not outcomes and not held:
            return Plan(requested=0)
        counts = {v: sum(1 for o in outcomes if o.verdict == v) for v in set(Verdict)}
        note = (
            f"{counts[Verdict.RECLAIMED]} reclaimed, {counts[Verdict.WOULD_RECLAIM]} would be"
            f" (report-only), {counts[Verdict.BRAKED]} braked, of {len(sessions)} RUNNING"
        )
        return Plan(
            requested=len(outcomes),
            outcomes=outcomes,
            note="; ".join([note, *held]),
            held="; ".join(held) or None,
            follow_ups=[(TERMINATE, [str(s) for s in moved])] if moved else (),
        )

    async def _judge(self, groups: dict[str, _Group]) -> list[GroupJudgement]:
        now = utcnow()
        ids = [s.id for _, members in groups.values() for s in members]
        kernels = [k.id for _, members in groups.values() for s in members for k in s.kernels]
        util = await self.activity.utilization(kernels) if self.activity else {}
        stamps = await self.activity.last_activity(ids) if self.activity else {}
        judged = [
            judge_group(name, policy, members, util, stamps, now)
            for name, (policy, members) in sorted(groups.items())
        ]
        busy = [s for g in judged for s in g.busy]
        if busy and self.activity is not None:
            await self.activity.touch(dict.fromkeys(busy, now))
        return judged

    async def _act(self, group: GroupJudgement, moved: list[SessionId]) -> list[ItemOutcome]:
        """The group's outcomes; terminates its reclaimed sessions unless held or report-only."""
        wanted = group.reclaim
        if group.held is not None:
            log.warning("reclaim of %s is held: %s", group.scaling_group, group.held)
            return [_outcome(j, Verdict.BRAKED, BRAKED, group.held) for j in wanted]
        if group.policy.report_only:
            for j in wanted:
                log.info("reclaim (report-only) would end %s: %s", j.session_id, j.reason)
            return [_outcome(j, Verdict.WOULD_RECLAIM, WOULD_RECLAIM) for j in wanted]
        out = []
        for reason in (C.LIFETIME_EXCEEDED_REASON, C.IDLE_TIMEOUT_REASON):
            ids = [j.session_id for j in wanted if j.reason == reason]
            done = set(await request_termination(self.repo, ids, reason)) if ids else set()
            moved.extend(sorted(done))
            for j in wanted:
                if j.reason != reason:
                    continue
                if j.session_id in done:
                    out.append(_outcome(j, Verdict.RECLAIMED, RECLAIMED))
                else:
                    out.append(_outcome(j, Verdict.SKIPPED, "no longer RUNNING"))
        return out


def _outcome(
    j: SessionJudgement, verdict: Verdict, kind: str, held: str | None = None
) -> ItemOutcome:
    """The session's outcome with its evidence: policy, age, last activity, the figures."""
    detail = {**j.evidence, "reason": j.reason}
    if held is not None:
        detail["held"] = held
    return ItemOutcome(
        str(j.session_id), None, error=f"{kind}: {j.reason}", detail=detail, verdict=verdict
    )


def build(ctx: HandlerContext) -> HandlerRuntime:
    """The reclaim policies bound to the repository and the activity store."""
    handler = ReclaimSessions(ctx.repository, ctx.activity, ctx.settings)
    return HandlerRuntime(DECLARATION, handler.plan)


DECLARATION = HandlerDeclaration(
    name=NAME,
    lock_id="LOCKID_SOKOVAN_RECLAIM_SESSIONS",
    description="ends RUNNING sessions past their group's max lifetime (LIFETIME_EXCEEDED) or "
    "idle for its idle timeout (IDLE_TIMEOUT); report-only and a brake per policy",
    default_interval=RECLAIM_INTERVAL_SEC,
    targets=Targets(sessions=(SessionStatus.RUNNING,)),
    # Sessions move through request_termination (the normal terminate path), not by verdict.
    transitions={},
    build=build,
)
