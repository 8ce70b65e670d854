"""Loaded into a test worker with `-I tests.poison`: destroy batches holding the agent named in
the file $TEST_POISON_FILE kill their pool process, every time, while the file exists.

It stands for a bug that one message triggers in the task body, the kind that crash-loops
a worker on redelivery; the delivery count runs before the body, as it would for the bug.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import tasks.agent_tasks  # noqa: F401  (registers the task patched below)
from tasks.app import app
from tasks.canvas import agent_batches_of

POISON_FILE_ENV = "TEST_POISON_FILE"
EXIT_CODE = 70


def _poisoned(agent_id: object) -> bool:
    path = os.environ.get(POISON_FILE_ENV)
    if not path or not Path(path).exists():
        return False
    return Path(path).read_text().strip() == str(agent_id)


def _install() -> None:
    task = app.tasks["sokovan.agent.destroy_kernels"]
    body = task.run

    def run(*args: Any, **kwargs: Any) -> Any:
        if any(_poisoned(agent_id) for agent_id, _ in agent_batches_of(args[1:], kwargs)):
            os._exit(EXIT_CODE)
        return body(*args, **kwargs)

    task.run = run


_install()
