"""Sweeps RUNNING kernels whose presence lapsed and whose agent confirms them dead."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sokovan import constants as C
from sokovan.errors import PresenceUnavailable
from sokovan.scheduler.handlers.base import KernelHandler
from sokovan.scheduler.terminator import SessionTerminator, StaleJudgement
from sokovan.types import (
    JSON,
    KernelExecutionResult,
    KernelInfo,
    KernelStatus,
    KernelStatusTransitions,
    KernelTransitionInfo,
)

log = logging.getLogger(__name__)

STALE_KERNEL_REASON = "STALE_KERNEL"
# Reason on kernels left alone because the brake held the whole run.
BRAKE_REASON = "SWEEP_BRAKE"


class SweepStaleKernelsKernelHandler(KernelHandler):
    """Marks kernels TERMINATED once presence and their agent both say they are gone."""

    name = "sweep_stale_kernels"
    lock_id = "LOCKID_SOKOVAN_TARGET_TERMINATING"
    target_kernel_statuses = (KernelStatus.RUNNING,)
    status_transitions = KernelStatusTransitions(success=None, failure=KernelStatus.TERMINATED)

    def __init__(
        self,
        terminator: SessionTerminator,
        max_stale_ratio: float = C.SWEEP_MAX_STALE_RATIO,
        brake_min_kernels: int = C.SWEEP_BRAKE_MIN_KERNELS,
    ) -> None:
        self._terminator = terminator
        self._max_stale_ratio = max_stale_ratio
        self._brake_min_kernels = brake_min_kernels

    async def execute(
        self, scaling_group: str, kernels: Sequence[KernelInfo]
    ) -> KernelExecutionResult:
        """Alive kernels are successes, confirmed-dead ones failures, the unsure skipped."""
        if not kernels:
            return KernelExecutionResult()
        try:
            judgement = await self._terminator.read_presence(kernels)
        except PresenceUnavailable as e:
            return _braked(scaling_group, kernels, f"presence unavailable: {e}", {})
        brake = self._ratio_brake(judgement)
        if brake is not None:
            return _braked(scaling_group, kernels, brake, judgement.evidence())
        if judgement.candidates:
            judgement = await self._terminator.confirm_with_agents(judgement)
        return _classify(kernels, judgement)

    def _ratio_brake(self, judgement: StaleJudgement) -> str | None:
        """Why this run must not kill, when too many kernels look stale at once."""
        if judgement.total < self._brake_min_kernels:
            return None
        if judgement.stale_ratio <= self._max_stale_ratio:
            return None
        return (
            f"{len(judgement.candidates)} of {judgement.total} kernels look stale,"
            f" above the ratio {self._max_stale_ratio}: presence outage suspected"
        )


def _classify(kernels: Sequence[KernelInfo], judgement: StaleJudgement) -> KernelExecutionResult:
    evidence = {e.kernel_id: e for e in judgement.candidates}
    result = KernelExecutionResult(evidence=judgement.evidence())
    for kernel in kernels:
        suspect = evidence.get(kernel.id)
        if suspect is None or suspect.alive:
            result.successes.append(KernelTransitionInfo(kernel.id, kernel.status, None))
        elif suspect.dead:
            result.failures.append(
                KernelTransitionInfo(kernel.id, kernel.status, STALE_KERNEL_REASON)
            )
        else:
            reason = f"unverified: {suspect.answer}"
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
