"""Terminating sessions and judging stale kernels."""

from sokovan.scheduler.terminator.destroy import (
    DestroyPlan,
    destroy_kernels_on_agent,
    parse_destroy_item,
    plan_destroy,
)
from sokovan.scheduler.terminator.stale import (
    KernelEvidence,
    Restarts,
    StaleJudgement,
    unverified_kind,
)
from sokovan.scheduler.terminator.terminator import SessionTerminator

__all__ = [
    "DestroyPlan",
    "KernelEvidence",
    "Restarts",
    "SessionTerminator",
    "StaleJudgement",
    "destroy_kernels_on_agent",
    "parse_destroy_item",
    "plan_destroy",
    "unverified_kind",
]
