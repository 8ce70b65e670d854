"""One task per agent batch. They never raise for an item: failures come back as values."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from sokovan.scheduler.specs.registry import execute_batch
from sokovan.types import AgentId, ItemOutcome, Operation, RunId
from tasks.app import app
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
        return [ItemOutcome(f"payload:{agent_id!s}", None, ok=False, error=error).to_json()]
    services = runtime().services
    outcomes = runtime().run(execute_batch(services, operation, AgentId(agent_id), items))
    try:  # recorded now too, so a run abandoned after a crash keeps what was done
        services.ledger.record_items(RunId(int(run_id)), outcomes)
    except Exception as e:  # the chord body records them again; duplicates are dropped
        log.warning("run %s: outcomes of agent %s not recorded early: %s", run_id, agent_id, e)
    return [o.to_json() for o in outcomes]


@app.task(name="sokovan.agent.destroy_kernels", bind=True)
def destroy_kernels(
    self: Task, run_id: int, agent_id: str, items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """destroy_kernel for each of one agent's kernels."""
    return _run_batch(Operation.DESTROY_KERNELS, run_id, agent_id, items)


@app.task(name="sokovan.agent.check_and_pull", bind=True)
def check_and_pull(
    self: Task, run_id: int, agent_id: str, items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """check_and_pull of one agent's de-duplicated images."""
    return _run_batch(Operation.CHECK_AND_PULL, run_id, agent_id, items)


@app.task(name="sokovan.agent.create_kernels", bind=True)
def create_kernels(
    self: Task, run_id: int, agent_id: str, items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """create_kernels on one agent: one call per session among the items."""
    return _run_batch(Operation.CREATE_KERNELS, run_id, agent_id, items)
