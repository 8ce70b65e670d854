"""What a sweep run records: one outcome per suspected kernel, and what its note says."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sokovan.types import ItemOutcome, KernelExecutionResult, KernelId, KernelInfo, Verdict

STALE_KERNEL_REASON = "STALE_KERNEL"
ABNORMAL_TERMINATION = "ABNORMAL_TERMINATION"
# Reason on kernels left alone because the brake held the whole run.
BRAKE_REASON = "SWEEP_BRAKE"
# Reason on kernels confirmed dead that a braked run leaves to the next ones (its reap rate).
DEFERRED_REASON = "deferred: reap rate of the brake"
# Reasons of kernels skipped because their agent could not confirm (stage 2's answer follows).
UNVERIFIED = "unverified"
_SKIP_VERDICTS = {BRAKE_REASON: Verdict.BRAKED, DEFERRED_REASON: Verdict.DEFERRED}


@dataclass(frozen=True, slots=True)
class SweepSummary:
    """What a sweep run's note says, and why it is `held` or `partial` (None: it is not)."""

    note: str | None
    held: str | None
    partial: str | None


def summarize(
    requested: int, outcomes: Sequence[ItemOutcome], brakes: Sequence[str], holds: Sequence[str]
) -> SweepSummary:
    """The run is `held` when a brake held, `partial` when it left kernels undecided."""
    reaped = sum(1 for o in outcomes if o.verdict == Verdict.DEAD)
    unverified = sum(1 for o in outcomes if o.verdict == Verdict.UNVERIFIED)
    deferred = sum(1 for o in outcomes if o.verdict == Verdict.DEFERRED)
    unverified_note = (
        f"{unverified} kernel(s) unverified (their agent could not confirm): skipped"
        if unverified
        else None
    )
    # The brake's own note already says how many it deferred; `partial` names them too.
    deferred_note = f"{deferred} confirmed dead left to the next runs" if deferred else None
    notes = [f"{reaped} stale kernel(s) terminated"] if requested else []
    notes += [unverified_note] if unverified_note else []
    notes += brakes
    undecided = [n for n in (unverified_note, deferred_note) if n is not None]
    return SweepSummary(
        note="; ".join(notes) or None,
        held="; ".join(holds) or None,
        partial="; ".join(undecided) or None,
    )


def sweep_outcomes(
    members: Sequence[KernelInfo], result: KernelExecutionResult
) -> list[ItemOutcome]:
    """One outcome per suspected kernel, carrying the evidence of both stages."""
    by_id = {k.id: k for k in members}
    out: list[ItemOutcome] = []
    for info in result.failures:
        kernel = by_id[info.kernel_id]
        evidence = dict(result.evidence.get(str(info.kernel_id), {}))
        evidence["session_id"] = str(kernel.session_id)
        out.append(
            ItemOutcome(str(info.kernel_id), kernel.agent_id, detail=evidence, verdict=Verdict.DEAD)
        )
    for info in result.skipped:
        evidence = dict(result.evidence.get(str(info.kernel_id), {}))
        out.append(
            ItemOutcome(
                str(info.kernel_id),
                by_id[info.kernel_id].agent_id,
                error=info.reason,
                detail=evidence,
                verdict=_SKIP_VERDICTS.get(info.reason or "", Verdict.UNVERIFIED),
            )
        )
    # Every other suspect was found alive: a success with a row; the unsuspected get none.
    # Walking the evidence, not the successes, keeps this to the few suspects of a large run.
    decided = {o.item_id for o in out}
    for key, seen in result.evidence.items():
        if key not in decided:
            alive = by_id.get(KernelId(uuid.UUID(key)))
            out.append(
                ItemOutcome(
                    key,
                    None if alive is None else alive.agent_id,
                    detail=dict(seen),
                    verdict=Verdict.ALIVE,
                )
            )
    return out
