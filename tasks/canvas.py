"""The only module that builds Celery canvas: one task per agent batch, chord to completion."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from celery import chord, group

from sokovan import constants as C
from sokovan.errors import DispatchError
from sokovan.types import AgentBatch, ItemOutcome, Operation, RunId, RunTrigger
from tasks import names


def fanout_signature(
    run_id: RunId,
    operation: Operation,
    batches: Sequence[AgentBatch],
    skipped: Sequence[ItemOutcome],
) -> Any:
    """chord(one task per agent batch) -> complete the run; a lost header fails the run."""
    from tasks.app import app

    body = app.signature(
        names.RUN_COMPLETE,
        kwargs={
            "run_id": int(run_id),
            "operation": str(operation),
            "skipped": [o.to_json() for o in skipped],
        },
    )
    body.on_error(app.signature(names.RUN_FAIL, kwargs={"run_id": int(run_id)}))
    header = [
        app.signature(
            names.agent_task(operation),
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
        """Sends the chord and returns its id; raises DispatchError when the broker refuses."""
        signature = fanout_signature(run_id, operation, batches, skipped)
        try:
            result = await asyncio.to_thread(signature.apply_async)
        except Exception as e:
            raise DispatchError(f"broker refused the fan-out of run {run_id}: {e}") from e
        return str(getattr(result, "id", ""))


class CeleryKicker:
    """Starts a handler run as a task, so event-driven work does not wait for beat."""

    async def kick(self, handler: str, trigger: RunTrigger, scope: Sequence[str] | None) -> None:
        from tasks.app import app

        await asyncio.to_thread(
            app.send_task,
            names.HANDLER_RUN,
            kwargs={
                "handler": handler,
                "trigger": str(trigger),
                "scope": list(scope or []) or None,
            },
        )


class CeleryKeypairRefiller:
    """KeypairRefiller port: sends the refill task."""

    async def request_refill(self) -> None:
        from tasks.app import app

        await asyncio.to_thread(
            app.send_task, names.KEYPAIRS_REFILL, expires=C.KEYPAIR_REFILL_INTERVAL_SEC
        )
