"""Task names: a public API for managers that `send_task` without importing us (docs/reference)."""

from __future__ import annotations

from typing import Final

from sokovan.types import Operation

# Public: sent by a manager, the CLI, the Python API or beat.
SESSION_CREATE: Final = "sokovan.session.create"
SESSION_TERMINATE: Final = "sokovan.session.terminate"
# A manager saw the session in use: reclaim's idle clock restarts (docs/operator/reclaim).
SESSION_TOUCH: Final = "sokovan.session.touch"
# Many sessions in one message: one task and one pull run for the lot.
SESSIONS_CREATE: Final = "sokovan.sessions.create"
# Many sessions ended in one message: one task and one terminate run for the lot.
SESSIONS_TERMINATE: Final = "sokovan.sessions.terminate"
HANDLER_RUN: Final = "sokovan.handler.run"
# One task per declared handler, `sokovan.handler.<name>`: Flower shows which handler ran.
HANDLER_TASK_PREFIX: Final = "sokovan.handler."
# Reads for a manager: the JSON documents the CLI's --json prints (README).
SESSION_GET: Final = "sokovan.session.get"
SESSION_LIST: Final = "sokovan.session.list"
RUN_GET: Final = "sokovan.run.get"
AGENTS_SYNC: Final = "sokovan.agents.sync"
# Node maintenance and registration of agents that do not register themselves.
AGENTS_REGISTER: Final = "sokovan.agents.register"
AGENTS_CORDON: Final = "sokovan.agents.cordon"
AGENTS_UNCORDON: Final = "sokovan.agents.uncordon"
AGENTS_DRAIN: Final = "sokovan.agents.drain"
MAINTENANCE_RECOVER: Final = "sokovan.maintenance.recover"
MAINTENANCE_PRUNE: Final = "sokovan.maintenance.prune"
PUBLIC: Final = (
    SESSION_CREATE,
    SESSION_TERMINATE,
    SESSION_TOUCH,
    SESSIONS_CREATE,
    SESSIONS_TERMINATE,
    HANDLER_RUN,
    SESSION_GET,
    SESSION_LIST,
    RUN_GET,
    AGENTS_SYNC,
    AGENTS_REGISTER,
    AGENTS_CORDON,
    AGENTS_UNCORDON,
    AGENTS_DRAIN,
    MAINTENANCE_RECOVER,
    MAINTENANCE_PRUNE,
)

# Internal: sent by the scheduler itself.
RUN_COMPLETE: Final = "sokovan.run.complete"  # chord body
RUN_FAIL: Final = "sokovan.run.fail"  # its errback
AGENT_TASK_PREFIX: Final = "sokovan.agent."
# The cluster keypair pool (beat and the launcher): a refill plans, generate tasks make keys.
KEYPAIRS_REFILL: Final = "sokovan.keypairs.refill"
KEYPAIRS_GENERATE: Final = "sokovan.keypairs.generate"


def handler_task(handler: str) -> str:
    """The task that starts one run of `handler` (the same as HANDLER_RUN with `handler=`)."""
    return f"{HANDLER_TASK_PREFIX}{handler}"


def agent_task(operation: Operation | str) -> str:
    """The task that runs one agent's batch of a declared operation."""
    return f"{AGENT_TASK_PREFIX}{operation}"
