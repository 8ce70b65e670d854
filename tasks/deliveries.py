"""Every task counts its deliveries; a message started too often without finishing is dead-lettered.

A message whose task kills its worker process comes back (requeued when a pool process dies,
restored after the visibility timeout when the whole worker dies) and would kill the next
one too. The count lives in Redis per task id, so it survives the deaths it counts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Task

from sokovan import constants as C
from sokovan.deadletter import DeadLetters, failed_outcomes, make_dead_letter
from sokovan.types import RunId
from tasks import names
from tasks.canvas import agent_batches_of
from tasks.runtime import WorkerRuntime, runtime

log = logging.getLogger(__name__)

_RUN_CLOSERS = frozenset({names.RUN_COMPLETE, names.RUN_FAIL})


def _is_batch(name: str) -> bool:
    return name.startswith(names.AGENT_TASK_PREFIX)


def dead_letters(rt: WorkerRuntime) -> DeadLetters:
    """The dead-letter store on this process's Redis client."""
    # A counter must outlive the redeliveries it counts, which come after the visibility timeout.
    ttl = max(3 * rt.settings.visibility_timeout, C.DELIVERY_COUNT_TTL_SEC)
    return DeadLetters(rt.services.redis, counter_ttl=ttl)


class CountedTask(Task):  # type: ignore[misc]
    """Base of every task: counts the delivery before the body and refuses a poison message."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task_id = self.request.id
        if self.request.called_directly or not task_id:
            return super().__call__(*args, **kwargs)
        rt = runtime()
        letters = dead_letters(rt)
        try:
            delivery = rt.run(letters.count_delivery(task_id))
        except Exception as e:  # an unreachable counter must not stop the work itself
            log.warning("task %s[%s]: delivery not counted: %s", self.name, task_id, e)
            return super().__call__(*args, **kwargs)
        if delivery.count > rt.settings.max_deliveries:
            return dead_letter(rt, self.name, task_id, args, kwargs, delivery.count)
        if delivery.duplicate or delivery.count > 1:
            # Harmless (every task is idempotent and the ledger counts an item once): noted.
            what = "a duplicate of a finished task" if delivery.duplicate else "redelivered"
            log.warning("task %s[%s] is %s (start %d)", self.name, task_id, what, delivery.count)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            try:
                rt.run(letters.finished(task_id))
            except Exception as e:
                log.warning("task %s[%s]: delivery count not cleared: %s", self.name, task_id, e)


def run_of(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int | None:
    """The run a task message belongs to, if it names one."""
    raw = args[0] if _is_batch(name) and args else kwargs.get("run_id")
    try:
        return None if raw is None else int(raw)
    except (TypeError, ValueError):
        return None


def dead_letter(
    rt: WorkerRuntime,
    name: str,
    task_id: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    count: int,
) -> Any:
    """Moves the message to the dead-letter list, records the failure, returns the task's result."""
    limit = rt.settings.max_deliveries
    reason = f"dead-lettered: delivered {count} times without finishing (max {limit})"
    run_id = run_of(name, args, kwargs)
    log.error("task %s[%s] of run %s %s", name, task_id, run_id, reason)
    letter = make_dead_letter(
        task_id, name, args, kwargs, deliveries=count, reason=reason, run_id=run_id
    )
    try:
        rt.run(dead_letters(rt).add(letter))
    except Exception as e:
        log.warning("task %s[%s]: dead letter not stored: %s", name, task_id, e)
    if _is_batch(name):
        return _refuse_batch(rt, run_id, args, kwargs, reason)
    if name in _RUN_CLOSERS and run_id is not None:
        return _fail_run(rt, RunId(run_id), reason)
    return {"error": reason, "kind": "DeadLettered", "task_id": task_id}


def _refuse_batch(
    rt: WorkerRuntime,
    run_id: int | None,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    reason: str,
) -> list[dict[str, Any]]:
    """Failed outcomes for the batch's kernels, recorded in its run and returned to the chord."""
    outcomes = [
        outcome
        for agent_id, items in agent_batches_of(args[1:], kwargs)
        for outcome in failed_outcomes(
            str(agent_id), items if isinstance(items, list) else [], reason
        )
    ]
    if run_id is not None:
        try:
            rt.services.ledger.sync.record_items(RunId(run_id), outcomes)
        except Exception as e:  # the chord body records them as well
            log.warning("run %s: dead-lettered outcomes not recorded: %s", run_id, e)
    return [o.to_json() for o in outcomes]


def _fail_run(rt: WorkerRuntime, run_id: RunId, reason: str) -> dict[str, Any]:
    """A chord body or errback that never finishes: its run ends failed with the reason."""
    try:
        record = rt.run(rt.services.coordinator.fail(run_id, reason))
    except Exception as e:
        log.warning("run %s: not closed after dead-lettering: %s", run_id, e)
        record = None
    status = None if record is None else str(record.status)
    return {"run_id": int(run_id), "status": status, "error": reason}
