"""Every handler, one declaration module each. To add one: write its module, list it here.

A handler module declares a `DECLARATION` (name, lock, interval, target statuses, declared
transitions, per-agent batch operations, budget unit, give-up policy) and the `build`
function that binds it to the adapters. Beat entries, the CLI's handler list, the per-agent
task routing and metrics labels are all derived from `HANDLERS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sokovan.config import Settings
from sokovan.errors import UnknownHandler
from sokovan.scheduler.handlers import (
    check_agents,
    pull_images,
    reclaim_sessions,
    reconcile_leftovers,
    schedule_sessions,
    start_sessions,
    sweep_stale_kernels,
    terminate_sessions,
)
from sokovan.scheduler.handlers.base import (
    BatchRunner,
    GiveUp,
    HandlerContext,
    HandlerDeclaration,
    HandlerRuntime,
)
from sokovan.types import AgentId, ItemOutcome, Operation, SessionStatus

HANDLERS: tuple[HandlerDeclaration, ...] = (
    schedule_sessions.DECLARATION,
    pull_images.DECLARATION,
    start_sessions.DECLARATION,
    terminate_sessions.DECLARATION,
    sweep_stale_kernels.DECLARATION,
    reconcile_leftovers.DECLARATION,
    check_agents.DECLARATION,
    reclaim_sessions.DECLARATION,
)


def handler_names() -> tuple[str, ...]:
    return tuple(d.name for d in HANDLERS)


def declaration(name: str) -> HandlerDeclaration:
    """The declaration of a handler; raises UnknownHandler naming the known ones."""
    for d in HANDLERS:
        if d.name == name:
            return d
    raise UnknownHandler(f"unknown handler {name!r}; known: {', '.join(handler_names())}")


def batch_runners() -> Mapping[Operation, BatchRunner]:
    """Each declared per-agent operation and the code that runs one agent's batch of it."""
    runners: dict[Operation, BatchRunner] = {}
    for d in HANDLERS:
        for operation, runner in d.batches.items():
            if runners.setdefault(operation, runner) is not runner:
                raise ValueError(f"operation {operation} is declared twice with different code")
    return runners


# The give-up policy of each session state a handler's deadline bounds.
_GIVE_UPS: dict[SessionStatus, GiveUp] = {
    d.give_up.state: d.give_up
    for d in HANDLERS
    if d.give_up is not None and d.give_up.state is not None
}


def give_up_in(state: SessionStatus) -> GiveUp | None:
    """The give-up policy of the handler whose deadline bounds this session state, if any."""
    return _GIVE_UPS.get(state)


def state_deadlines(settings: Settings) -> dict[SessionStatus, float]:
    """Seconds a session may stay in each state that has a deadline, as configured."""
    return {state: give_up.deadline(settings) for state, give_up in _GIVE_UPS.items()}


def build_handlers(ctx: HandlerContext) -> list[HandlerRuntime]:
    """Every declared handler bound to the adapters."""
    return [d.build(ctx) for d in HANDLERS]


async def execute_batch(
    ctx: HandlerContext,
    operation: Operation | str,
    agent_id: AgentId,
    items: Sequence[Mapping[str, Any]],
) -> list[ItemOutcome]:
    """One agent's share of a fan-out; per-item failures come back as outcomes."""
    runner = batch_runners().get(Operation(operation))
    if runner is None:
        raise ValueError(f"unknown operation {operation!r}")
    return await runner(ctx, agent_id, items)
