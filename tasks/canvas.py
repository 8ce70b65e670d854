"""The only module that builds Celery canvas: one task per agent batch, chord to completion."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from celery import chord, group

from sokovan.errors import DispatchError
from sokovan.types import AgentBatch, ItemOutcome, Operation, RunId, RunTrigger

AGENT_TASK_NAMES = {
    Operation.DESTROY_KERNELS: "sokovan.agent.destroy_kernels",
    Operation.CHECK_AND_PULL: "sokovan.agent.check_and_pull",
    Operation.CREATE_KERNELS: "sokovan.agent.create_kernels",
}
COMPLETE_RUN = "sokovan.run.complete"
FAIL_RUN = "sokovan.run.fail"
RUN_HANDLER = "sokovan.handler.run"


def fanout_signature(
    run_id: RunId,
    operation: Operation,
    batches: Sequence[AgentBatch],
    skipped: Sequence[ItemOutcome],
) -> Any:
    """chord(one task per agent batch) -> complete the run; a lost header fails the run."""
    from tasks.app import app

    body = app.signature(
        COMPLETE_RUN,
        kwargs={
            "run_id": int(run_id),
            "operation": str(operation),
            "skipped": [o.to_json() for o in skipped],
        },
    )
    body.on_error(app.signature(FAIL_RUN, kwargs={"run_id": int(run_id)}))
    header = [
        app.signature(
            AGENT_TASK_NAMES[operation],
            args=(int(run_id), str(b.agent_id), list(b.items)),
        )
        for b in batches
    ]
    if not header:
        return body.clone(args=([],))
    return chord(group(header), body)


class CeleryFanOut:
    """FanOut port over Celery chords."""

    async def dispatch(
        self,
        run_id: RunId,
        operation: Operation,
        batches: Sequence[AgentBatch],
        skipped: Sequence[ItemOutcome] = (),
    ) -> str:
        """Sends the chord; raises DispatchError when the broker does not take it."""
        signature = fanout_signature(run_id, operation, batches, skipped)
        try:
            result = await asyncio.to_thread(signature.apply_async)
        except Exception as e:
            raise DispatchError(f"broker refused the fan-out of run {run_id}: {e}") from e
        fanout_id = str(getattr(result, "id", ""))
        await asyncio.to_thread(_note_fanout, run_id, fanout_id, operation)
        return fanout_id


def _note_fanout(run_id: RunId, fanout_id: str, operation: Operation) -> None:
    from tasks.runtime import runtime

    runtime().services.ledger.update_run(run_id, fanout_id=fanout_id, operation=str(operation))


class CeleryKicker:
    """Starts a handler run as a task, so event-driven work does not wait for beat."""

    async def kick(self, handler: str, trigger: RunTrigger, scope: Sequence[str] | None) -> None:
        from tasks.app import app

        await asyncio.to_thread(
            app.send_task,
            RUN_HANDLER,
            kwargs={
                "handler": handler,
                "trigger": str(trigger),
                "scope": list(scope or []) or None,
            },
        )
