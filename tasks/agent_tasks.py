"""One task per group of agent batches of each declared operation. They never raise for an
item: failures come back as values, so the chord body always runs and counts."""

from __future__ import annotations

import logging
from typing import Any

from sokovan.scheduler.handlers import batch_runners
from sokovan.scheduler.outcomes import run_batches
from sokovan.types import AgentBatch, AgentId, ItemOutcome, Operation, RunId
from tasks import names
from tasks.base import task
from tasks.canvas import agent_batches_of
from tasks.runtime import runtime

log = logging.getLogger(__name__)


def _refused(operation: Operation, run_id: Any, agent_id: Any, items: Any) -> ItemOutcome:
    error = (
        f"malformed {operation} payload for run {run_id!r}: agent_id must be a non-empty "
        f"string and items a list (got {type(agent_id).__name__}, {type(items).__name__})"
    )
    log.warning(error)
    return ItemOutcome(f"payload:{agent_id!s}"[:64], None, ok=False, error=error)


def _run_batches(
    operation: Operation, run_id: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[dict[str, Any]]:
    """Validates each agent's payload, runs the good ones together, returns outcome dicts; a
    bad agent payload fails alone."""
    refused: list[ItemOutcome] = []
    batches: list[AgentBatch] = []
    for agent_id, items in agent_batches_of(rest, kwargs):
        if not isinstance(agent_id, str) or not agent_id or not isinstance(items, list):
            refused.append(_refused(operation, run_id, agent_id, items))
        else:
            batches.append(AgentBatch(AgentId(agent_id), tuple(items)))
    if not batches:
        return [o.to_json() for o in refused]
    rt = runtime()
    s = rt.services
    # Under the run's lease, and recorded with the kernels' moves as soon as each agent's share
    # ends, so a crash after it leaves its kernels done and a run abandoned before it counts
    # nothing of it (sokovan.scheduler.outcomes).
    outcomes = rt.run(
        run_batches(s.coordinator, s.ledger, s.context, RunId(int(run_id)), operation, batches)
    )
    return [o.to_json() for o in [*outcomes, *refused]]


def _register(operation: Operation) -> Any:
    def run_agent_batches(run_id: int, *batches: Any, **legacy: Any) -> Any:
        return _run_batches(operation, run_id, batches, legacy)

    run_agent_batches.__doc__ = f"{operation} for a group of agent batches of a run."
    run_agent_batches.__name__ = run_agent_batches.__qualname__ = str(operation)
    return task(names.agent_task(operation))(run_agent_batches)


# The task routing follows the handler declarations: one task per declared operation.
AGENT_TASKS = {operation: _register(operation) for operation in batch_runners()}
