"""Chord body and errback: they close runs in the ledger."""

from __future__ import annotations

import logging
from typing import Any

from sokovan.types import ItemOutcome, Operation, RunId
from tasks import names
from tasks.base import task
from tasks.runtime import runtime

log = logging.getLogger(__name__)


def _outcomes(results: Any, skipped: Any) -> list[ItemOutcome]:
    out: list[ItemOutcome] = []
    for batch in results or []:
        for raw in batch or []:
            try:
                out.append(ItemOutcome.from_json(raw))
            except (KeyError, TypeError, ValueError) as e:
                log.warning("unreadable outcome %.200r: %s", raw, e)
    out.extend(ItemOutcome.from_json(raw) for raw in skipped or [])
    return out


@task(names.RUN_COMPLETE)
def complete_run(
    results: list[list[dict[str, Any]]],
    run_id: int,
    operation: str,
    skipped: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Counts a fan-out: its batches recorded every outcome and kernel move; this lets the
    handler end what they finished and closes the run."""
    rt = runtime()
    record = rt.run(
        rt.services.coordinator.complete(
            RunId(run_id), Operation(operation), _outcomes(results, skipped)
        )
    )
    if record is None:
        return {"run_id": run_id, "closed": False}
    return {
        "run_id": run_id,
        "closed": True,
        "status": str(record.status),
        "succeeded": record.succeeded,
        "failed": record.failed,
        "skipped": record.skipped,
    }


@task(names.RUN_FAIL)
def fail_run(request: Any, exc: Any, traceback: Any, run_id: int) -> dict[str, Any]:
    """Errback of a chord body: a header task was lost, so the run ends failed."""
    rt = runtime()
    record = rt.run(rt.services.coordinator.fail(RunId(run_id), f"fan-out lost a task: {exc!r}"))
    return {"run_id": run_id, "status": None if record is None else str(record.status)}
