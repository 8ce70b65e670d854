"""The cluster keypair pool's refill: one task plans it, generate tasks spread the work."""

from __future__ import annotations

from typing import Any, Final

from sokovan import constants as C
from tasks.app import app
from tasks.base import task
from tasks.names import KEYPAIRS_GENERATE, KEYPAIRS_REFILL
from tasks.runtime import runtime

# Generate tasks go out at the broker's lowest priority: any launch task queued is taken first.
KEYPAIR_GENERATE_PRIORITY: Final = 9
# A generate task still queued this long is dropped: the pool was refilled another way by then,
# or the next beat tick plans again. Long, because they wait behind every launch task.
KEYPAIR_GENERATE_EXPIRES_SEC: Final = 600


@task(KEYPAIRS_REFILL)
def refill_keypairs() -> dict[str, Any]:
    """Sends the generate tasks that bring the pool to its target, when it is short."""
    rt = runtime()
    plan = rt.run(rt.services.keys.plan_refill())
    for count in plan.counts:
        app.send_task(
            KEYPAIRS_GENERATE,
            kwargs={"count": count},
            expires=KEYPAIR_GENERATE_EXPIRES_SEC,
            priority=KEYPAIR_GENERATE_PRIORITY,
        )
    if plan.recheck:
        app.send_task(KEYPAIRS_REFILL, countdown=C.KEYPAIR_RECHECK_SEC)
    return {"tasks": len(plan.counts), "keys": sum(plan.counts), "note": plan.note}


@task(KEYPAIRS_GENERATE)
def generate_keypairs(count: int) -> dict[str, Any]:
    """Makes up to `count` keypairs into the pool, stopping once it is full."""
    if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= 1000:
        error = f"count must be an integer in 1..1000, not {count!r}"[:200]
        return {"error": error, "kind": "InvalidRequest", "field": "count"}
    rt = runtime()
    return {"generated": rt.run(rt.services.keys.fill(count))}
