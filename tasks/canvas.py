"""The only module that builds Celery canvas: agent batches grouped into a few tasks, chord to
completion."""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Mapping, Sequence
from typing import Any

from celery import chord, group

from sokovan import constants as C
from sokovan.errors import DispatchError
from sokovan.types import AgentBatch, ItemOutcome, Operation, RunId, RunTrigger
from tasks import names


def group_batches(
    batches: Sequence[AgentBatch], max_tasks: int, agents_per_task: int
) -> list[list[AgentBatch]]:
    """The agent batches in as few groups as the bounds allow: at most `agents_per_task`
    agents a group, at most `max_tasks` groups unless the first bound needs more; the
    agents with most items placed first, each on the group holding fewest items."""
    if not batches:
        return []
    per_task = max(1, agents_per_task)
    count = min(len(batches), max(max(1, max_tasks), math.ceil(len(batches) / per_task)))
    groups: list[list[AgentBatch]] = [[] for _ in range(count)]
    lightest = [(0, index) for index in range(count)]  # (items, group), a heap
    for batch in sorted(batches, key=lambda b: len(b.items), reverse=True):
        items, index = heapq.heappop(lightest)
        groups[index].append(batch)
        if len(groups[index]) < per_task:
            heapq.heappush(lightest, (items + len(batch.items), index))
    return [g for g in groups if g]


def agent_batches_of(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[tuple[Any, Any]]:
    """The (agent_id, items) pairs of a batch task's arguments after its run id: a list of
    `[agent_id, items]`, or (as a one-agent task was sent before) an agent id and its items."""
    if "agent_id" in kwargs or "items" in kwargs:
        return [(kwargs.get("agent_id"), kwargs.get("items"))]
    if len(args) >= 2 and not isinstance(args[0], list):
        return [(args[0], args[1])]
    if len(args) == 1 and isinstance(args[0], list):
        return [_pair(entry) for entry in args[0]]
    return [(None, None)]


def _pair(entry: Any) -> tuple[Any, Any]:
    if isinstance(entry, list | tuple) and len(entry) == 2:
        return entry[0], entry[1]
    return entry, None


def fanout_signature(
    run_id: RunId,
    operation: Operation,
    batches: Sequence[AgentBatch],
    skipped: Sequence[ItemOutcome],
    max_tasks: int = 1,
    agents_per_task: int = 1,
) -> Any:
    """chord(one task per group of agent batches) -> complete the run; a lost header fails
    the run. Each header task carries `[[agent_id, items], ...]`."""
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
            args=(int(run_id), [[str(b.agent_id), list(b.items)] for b in group]),
        )
        for group in group_batches(batches, max_tasks, agents_per_task)
    ]
    if not header:
        return body.clone(args=([],))
    return chord(group(header), body)


class CeleryFanOut:
    """FanOut port over Celery chords: at most `max_tasks` tasks a fan-out, each of at most
    `agents_per_task` agents (Settings.fanout_tasks, fanout_agents_per_task)."""

    def __init__(self, max_tasks: int = 1, agents_per_task: int = 1) -> None:
        self.max_tasks = max_tasks
        self.agents_per_task = agents_per_task

    async def dispatch(
        self,
        run_id: RunId,
        operation: Operation,
        batches: Sequence[AgentBatch],
        skipped: Sequence[ItemOutcome] = (),
    ) -> str:
        """Sends the chord and returns its id; raises DispatchError when the broker refuses."""
        signature = fanout_signature(
            run_id, operation, batches, skipped, self.max_tasks, self.agents_per_task
        )
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
