"""The worker and beat command lines, written once: the Procfile, `sokovan up`, the demo and
the tests start them from here (a test checks the Procfile against it)."""

from __future__ import annotations

from pathlib import Path

from sokovan import constants as C

# The queue every task goes to (task_default_queue); workers consume it.
QUEUE = C.TASK_QUEUE
# A worker's environment: SIGTERM starts Celery's soft shutdown (worker_soft_shutdown_timeout)
# and then hands unfinished acks-late tasks back to the queue at once.
WORKER_ENV = {"REMAP_SIGTERM": "SIGQUIT"}


def worker_env_prefix() -> str:
    """WORKER_ENV as a shell prefix, for Procfile lines."""
    return " ".join(f"{k}={v}" for k, v in WORKER_ENV.items())


def worker_args(
    *, concurrency: int = C.WORKER_CONCURRENCY, node: str = "worker1@%h", loglevel: str = "INFO"
) -> list[str]:
    """`celery` arguments of a worker: events on (Flower), our queue, a node name."""
    return [
        "-A",
        "tasks.app",
        "worker",
        "-E",
        "-l",
        loglevel,
        "-c",
        str(concurrency),
        "-Q",
        QUEUE,
        "-n",
        node,
    ]


def beat_args(schedule_file: Path | str, *, loglevel: str = "INFO") -> list[str]:
    """`celery` arguments of beat, with its schedule file."""
    return ["-A", "tasks.app", "beat", "-l", loglevel, "-s", str(schedule_file)]
