"""schedule_sessions: PENDING -> SCHEDULED, oldest first per scaling group, as room frees.

No agent is called: placing a waiting session is one transaction under the placement lock
(sokovan.scheduler.pending). Runs after a termination frees slots, when an agent joins,
and on its tick; placed sessions go on to pull_images at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from sokovan import constants as C
from sokovan.ports import SchedulerStore
from sokovan.scheduler.handlers import pull_images
from sokovan.scheduler.handlers.base import (
    HandlerContext,
    HandlerDeclaration,
    HandlerRuntime,
    Plan,
    Targets,
)
from sokovan.types import ItemOutcome, RunId, SessionStatus

NAME = "schedule_sessions"


class ScheduleSessions:
    """Places waiting sessions as room frees, oldest first per scaling group."""

    def __init__(self, repo: SchedulerStore) -> None:
        self.repo = repo

    async def plan(self, run_id: RunId, scope: Sequence[str] | None, budget: int) -> Plan:
        """Places what fits now; placed sessions go on to pull at once."""
        # The queue's order is the whole group's: a scope cannot reorder it, so it is not used.
        done = await self.repo.schedule_pending(budget)
        if not done.placed:
            return Plan(requested=0)
        ids = [str(s) for s in done.placed]
        return Plan(
            requested=len(ids),
            outcomes=[ItemOutcome(sid, None, ok=True, detail={"session_id": sid}) for sid in ids],
            note=f"{len(ids)} placed, {done.waiting} still PENDING",
            follow_ups=[(pull_images.NAME, ids)],
        )


def build(ctx: HandlerContext) -> HandlerRuntime:
    """The pending queue bound to the repository."""
    return HandlerRuntime(DECLARATION, ScheduleSessions(ctx.repository).plan)


DECLARATION = HandlerDeclaration(
    name=NAME,
    lock_id="LOCKID_SOKOVAN_SCHEDULE_SESSIONS",
    description="places PENDING sessions oldest first per scaling group when room frees",
    default_interval=C.LAUNCH_INTERVAL_SEC,
    interval_setting="launch_interval",
    targets=Targets(sessions=(SessionStatus.PENDING,)),
    # Sessions and their kernels move inside the placement transaction, not by verdict.
    transitions={},
    build=build,
)
