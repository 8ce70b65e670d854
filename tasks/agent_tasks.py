"""One task per agent batch of each declared operation. They never raise for an item:
failures come back as values, so the chord body always runs and counts."""

from __future__ import annotations

import logging
from typing import Any

from sokovan.scheduler.handlers import batch_runners
from sokovan.scheduler.outcomes import run_batch
from sokovan.types import AgentId, ItemOutcome, Operation, RunId
from tasks import names
from tasks.base import task
from tasks.runtime import runtime

log = logging.getLogger(__name__)


def _run_batch(
    operation: Operation, run_id: Any, agent_id: Any, items: Any
) -> list[dict[str, Any]]:
    """Validates the payload, runs the batch, returns outcome dicts; a bad payload fails alone."""
    if not isinstance(agent_id, str) or not agent_id or not isinstance(items, list):
        error = (
            f"malformed {operation} payload for run {run_id!r}: agent_id must be a non-empty "
            f"string and items a list (got {type(agent_id).__name__}, {type(items).__name__})"
        )
        log.warning(error)
        return [ItemOutcome(f"payload:{agent_id!s}"[:64], None, ok=False, error=error).to_json()]
    rt = runtime()
    s = rt.services
    # Under the run's lease, and recorded with the kernels' moves as soon as it ends, so a
    # crash after this batch leaves its kernels done and a run abandoned before it counts
    # nothing of it (sokovan.scheduler.outcomes).
    outcomes = rt.run(
        run_batch(
            s.coordinator,
            s.ledger,
            s.context,
            RunId(int(run_id)),
            operation,
            AgentId(agent_id),
            items,
        )
    )
    return [o.to_json() for o in outcomes]


def _register(operation: Operation) -> Any:
    def run_agent_batch(run_id: int, agent_id: str, items: list[dict[str, Any]]) -> Any:
        return _run_batch(operation, run_id, agent_id, items)

    run_agent_batch.__doc__ = f"{operation} for one agent's batch of a run."
    run_agent_batch.__name__ = run_agent_batch.__qualname__ = str(operation)
    return task(names.agent_task(operation))(run_agent_batch)


# The task routing follows the handler declarations: one task per declared operation.
AGENT_TASKS = {operation: _register(operation) for operation in batch_runners()}
