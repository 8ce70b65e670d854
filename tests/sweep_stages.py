"""The sweep's two stages run back to back, as its handler runs them when no brake holds."""

from __future__ import annotations

from collections.abc import Sequence

from sokovan.scheduler.terminator import SessionTerminator, StaleJudgement
from sokovan.types import KernelId, KernelInfo


async def judge_stale_kernels(
    terminator: SessionTerminator, kernels: Sequence[KernelInfo]
) -> StaleJudgement:
    """Both stages of the sweep, with the evidence for every suspected kernel."""
    judgement = await terminator.read_presence(kernels)
    if not judgement.candidates:
        return judgement
    return await terminator.confirm_with_agents(judgement)


async def check_stale_kernels(
    terminator: SessionTerminator, kernels: Sequence[KernelInfo]
) -> list[KernelId]:
    """Returns kernels confirmed dead by their agent, in input order."""
    return (await judge_stale_kernels(terminator, kernels)).dead_kernel_ids
