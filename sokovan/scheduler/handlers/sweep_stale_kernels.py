"""sweep_stale_kernels: reap RUNNING kernels whose presence lapsed and whose agent confirms
them gone. No fan-out: the sweep judges in its planning step and the coordinator applies."""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

from sokovan import constants as C
from sokovan.errors import PresenceUnavailable
from sokovan.scheduler.handlers.base import (
    FollowUps,
    HandlerContext,
    HandlerDeclaration,
    HandlerRuntime,
    KernelHandler,
    Moved,
    Plan,
    Targets,
    Transition,
)
from sokovan.scheduler.handlers.terminate_sessions import NAME as TERMINATE
from sokovan.scheduler.sweep_brake import RatioBrake, judge_braked
from sokovan.scheduler.sweep_load import load_sweep_targets
from sokovan.scheduler.sweep_record import (
    ABNORMAL_TERMINATION,
    BRAKE_REASON,
    DEFERRED_REASON,
    STALE_KERNEL_REASON,
    UNVERIFIED,
    summarize,
    sweep_outcomes,
)
from sokovan.scheduler.terminator import Restarts, SessionTerminator, StaleJudgement
from sokovan.scheduler.transitions import parse_ids, request_termination, session_ids_of
from sokovan.types import (
    JSON,
    ItemOutcome,
    KernelExecutionResult,
    KernelId,
    KernelInfo,
    KernelStatus,
    KernelTransitionInfo,
    RunId,
    SessionId,
    Verdict,
    utcnow,
)

log = logging.getLogger(__name__)

# A scaling group of one sweep: its kernel count and the kernels judged in full.
_Group = tuple[int, list[KernelInfo]]


class SweepStaleKernelsKernelHandler(KernelHandler):
    """Marks kernels TERMINATED once presence and their agent both say they are gone."""

    def __init__(
        self,
        terminator: SessionTerminator,
        max_stale_ratio: float = C.SWEEP_MAX_STALE_RATIO,
        brake_min_kernels: int = C.SWEEP_BRAKE_MIN_KERNELS,
        brake_reap_share: float = C.SWEEP_BRAKE_REAP_SHARE,
    ) -> None:
        self._terminator = terminator
        self._brake = RatioBrake(max_stale_ratio, brake_min_kernels, brake_reap_share)

    async def execute(
        self,
        scaling_group: str,
        kernels: Sequence[KernelInfo],
        *,
        total: int | None = None,
        complete: bool = True,
        restarts: Restarts | None = None,
    ) -> KernelExecutionResult:
        """Alive kernels are successes, confirmed-dead ones failures, the unsure skipped.

        `total` is the group's kernel count when `kernels` are only its suspects, so the
        ratio brake weighs them against the whole group. `complete` False: not all RUNNING
        kernels are read (budget, scope); agents' last-check stamps are then left alone.
        `restarts`: agents restarted lately; their kernels last present before the restart
        are suspects although not stale. A braked run sets `brake`: with no failures it
        held; with failures it reaped at the brake's rate and `brake` says how many it left
        for the next runs.
        """
        if not kernels:
            return KernelExecutionResult()
        try:
            judgement = await self._terminator.read_presence(
                kernels, stamp_agents=complete, restarts=restarts
            )
        except PresenceUnavailable as e:
            return _braked(scaling_group, kernels, f"presence unavailable: {e}", {})
        if total is not None and total > judgement.total:
            judgement = dataclasses.replace(judgement, total=total)
        brake = self._brake.engaged(judgement)
        if brake is None:
            if judgement.candidates:
                judgement = await self._terminator.confirm_with_agents(judgement)
            return _classify(kernels, judgement)
        allowance = self._brake.allowance(judgement.total)
        if not allowance:
            held = f"{brake}: presence outage suspected"
            return _braked(scaling_group, kernels, held, judgement.evidence())
        judgement = await self._terminator.confirm_with_agents(judgement)
        verdict = judge_braked(brake, judgement, allowance)
        if verdict.hold is not None:
            return _braked(scaling_group, kernels, verdict.hold, judgement.evidence())
        log.warning("sweep of %s is braked: %s", scaling_group, verdict.note)
        result = _classify(kernels, judgement, frozenset(verdict.deferred))
        return dataclasses.replace(result, brake=verdict.note)


def _classify(
    kernels: Sequence[KernelInfo],
    judgement: StaleJudgement,
    deferred: frozenset[KernelId] = frozenset(),
) -> KernelExecutionResult:
    evidence = {e.kernel_id: e for e in judgement.candidates}
    result = KernelExecutionResult(evidence=judgement.evidence())
    for kernel in kernels:
        suspect = evidence.get(kernel.id)
        if suspect is None or suspect.alive:
            result.successes.append(KernelTransitionInfo(kernel.id, kernel.status, None))
        elif kernel.id in deferred:
            result.skipped.append(KernelTransitionInfo(kernel.id, kernel.status, DEFERRED_REASON))
        elif suspect.dead:
            result.failures.append(
                KernelTransitionInfo(kernel.id, kernel.status, STALE_KERNEL_REASON)
            )
        else:
            reason = f"{UNVERIFIED}: {suspect.answer}"
            result.skipped.append(KernelTransitionInfo(kernel.id, kernel.status, reason))
    return result


def _braked(
    scaling_group: str, kernels: Sequence[KernelInfo], brake: str, evidence: dict[str, JSON]
) -> KernelExecutionResult:
    """A result that changes nothing and says why."""
    log.warning(
        "sweep of %s kills nothing this run (%s); suspected kernels: %s",
        scaling_group,
        brake,
        ", ".join(evidence) or "unknown",
    )
    skipped = [KernelTransitionInfo(k.id, k.status, BRAKE_REASON) for k in kernels]
    return KernelExecutionResult(skipped=skipped, evidence=evidence, brake=brake)


def build(ctx: HandlerContext) -> HandlerRuntime:
    """The sweep bound to its adapters: it judges while planning, with no fan-out."""
    repo = ctx.repository
    settings = ctx.settings
    handler = SweepStaleKernelsKernelHandler(
        ctx.terminator,
        max_stale_ratio=settings.sweep_max_stale_ratio,
        brake_min_kernels=settings.sweep_brake_min_kernels,
        brake_reap_share=settings.sweep_brake_reap_share,
    )

    async def plan(run_id: RunId, scope: Sequence[str] | None, budget: int) -> Plan:
        with _collector_paused():
            return await judge(scope, budget)

    async def judge(scope: Sequence[str] | None, budget: int) -> Plan:
        only = parse_ids(scope)
        # A budget or a scope reads only some kernels: no agent may then look checked.
        complete = only is None and not budget
        restarts = await _restarts()
        groups = await _load(
            None if only is None else [KernelId(u) for u in only], budget, complete, restarts
        )
        outcomes: list[ItemOutcome] = []
        bulk_ok = 0
        brakes: list[str] = []
        holds: list[str] = []
        for group, (total, members) in groups.items():
            result = await handler.execute(
                group, members, total=total, complete=complete, restarts=restarts
            )
            if result.brake:
                brakes.append(f"{group}: brake: {result.brake}")
                if not result.failures:
                    holds.append(brakes[-1])
            group_outcomes = sweep_outcomes(members, result)
            outcomes.extend(group_outcomes)
            bulk_ok += total - len(group_outcomes)
        requested = sum(total for total, _ in groups.values())
        summary = summarize(requested, outcomes, brakes, holds)
        return Plan(
            requested=requested,
            outcomes=outcomes,
            bulk_ok=bulk_ok,
            note=summary.note,
            held=summary.held,
            partial=summary.partial,
        )

    async def _restarts() -> Restarts:
        """Agents restarted within the stale window, with their start.

        An agent restarted earlier needs no look: a kernel last present before its start is
        STALE by now. One sweep interval more, so none falls between the two rules.
        """
        window = settings.presence_stale_after + settings.sweep_interval
        since = utcnow() - timedelta(seconds=window)
        found = await repo.agents_restarted_since(since)
        return {agent: at.timestamp() for agent, at in found.items()}

    async def _load(
        only: list[KernelId] | None, budget: int, complete: bool, restarts: Restarts
    ) -> dict[str, _Group]:
        """Each scaling group's kernel count and the kernels to judge in full."""
        statuses = list(DECLARATION.targets.kernels)
        try:
            targets = await load_sweep_targets(
                repo,
                ctx.terminator.presence,
                statuses,
                budget=budget,
                only=only,
                stamp_agents=complete,
                restarted=frozenset(restarts),
            )
            return {g: (t.total, t.suspects) for g, t in targets.groups.items()}
        except PresenceUnavailable:
            # Every kernel goes to the handler, whose brake then skips them all and says why.
            kernels = await repo.kernels_to_sweep(statuses, limit=budget, only=only)
            by_group: dict[str, list[KernelInfo]] = {}
            for k in kernels:
                by_group.setdefault(k.scaling_group, []).append(k)
            return {g: (len(members), members) for g, members in by_group.items()}

    async def complete(run_id: RunId, outcomes: Sequence[ItemOutcome], moved: Moved) -> FollowUps:
        """Sessions of reaped kernels go TERMINATING, so the rest of each is cleaned up."""
        reaped = {str(k) for k in moved.get(Verdict.DEAD, ())}
        sessions: set[SessionId] = session_ids_of(o for o in outcomes if o.item_id in reaped)
        if not sessions:
            return ()
        moved_sessions = await request_termination(repo, sorted(sessions), ABNORMAL_TERMINATION)
        return [(TERMINATE, [str(s) for s in moved_sessions] or None)]

    return HandlerRuntime(DECLARATION, plan, {None: complete})


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Holds off Python's cyclic garbage collector for the length of one sweep."""
    # A sweep loads every RUNNING kernel at once: a burst of 100k+ objects that live until the
    # run ends and hold no cycles. Each automatic collection meanwhile walks them all again,
    # which took most of the judging time; reference counting frees them all the same.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


DECLARATION = HandlerDeclaration(
    name="sweep_stale_kernels",
    lock_id="LOCKID_SOKOVAN_TARGET_TERMINATING",
    description="reaps RUNNING kernels whose presence lapsed and whose agent confirms them dead",
    default_interval=C.SWEEP_INTERVAL_SEC,
    interval_setting="sweep_interval",
    targets=Targets(kernels=(KernelStatus.RUNNING,)),
    transitions={
        Verdict.DEAD: Transition(
            KernelStatus.TERMINATED, (KernelStatus.RUNNING,), STALE_KERNEL_REASON
        )
    },
    build=build,
)
