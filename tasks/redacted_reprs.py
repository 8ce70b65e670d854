"""Secrets kept out of Celery's reprs: task-sent and task-received events, Flower, logs.

Celery shows a task's arguments through `argsrepr`/`kwargsrepr`: the sender computes
them (here, redacted, for every message this app sends) and the worker trusts what the
message says. The worker recomputes them from the arguments instead, so a message from a
sender that set none, or set them in clear, shows no secret either.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from celery import Task
from celery.app.amqp import AMQP
from celery.utils.saferepr import saferepr
from celery.worker.request import Request

from sokovan.constants import DEFAULT_SECRET_ENV_PATTERNS
from sokovan.redaction import redact

# The app configuration key holding the secret-name patterns (SOKOVAN_SECRET_ENV_PATTERNS).
PATTERNS_KEY = "sokovan_secret_env_patterns"
REPR_MAXSIZE = 1024
# Where a repr stops showing a long argument.
ELIDED = "..."
# What every task's `Request` names (a task base class of the edge must keep it).
REDACTING_REQUEST = "tasks.redacted_reprs:RedactingRequest"


def _patterns(app: Any) -> tuple[str, ...]:
    return tuple(app.conf.get(PATTERNS_KEY) or DEFAULT_SECRET_ENV_PATTERNS)


def redacted_repr(value: Any, patterns: Iterable[str] = DEFAULT_SECRET_ENV_PATTERNS) -> str:
    """Celery's saferepr of task arguments with every secret value replaced.

    Only the head a repr of REPR_MAXSIZE shows is copied and redacted: a batch of 100 items,
    or a chord body of 10,000 outcomes, was walked whole for every message sent and received.
    """
    head, _ = _head(value, REPR_MAXSIZE)
    return str(saferepr(redact(head, patterns), REPR_MAXSIZE))


def _head(value: Any, budget: int) -> tuple[Any, int]:
    """The part of `value` that a repr of about `budget` characters shows, and its length."""
    if isinstance(value, Mapping):
        shown: dict[Any, Any] = {}
        used = 2
        for key, item in value.items():
            if used >= budget:
                shown[ELIDED] = f"{len(value) - len(shown)} more"
                break
            part, length = _head(item, budget - used)
            shown[key] = part
            used += length + len(repr(key)) + 4
        return shown, used
    if isinstance(value, list | tuple):
        items: list[Any] = []
        used = 2
        for item in value:
            if used >= budget:
                items.append(f"{ELIDED} {len(value) - len(items)} more")
                break
            part, length = _head(item, budget - used)
            items.append(part)
            used += length + 2
        return type(value)(items), used
    return value, len(repr(value))


_AS_TASK_V2 = inspect.signature(AMQP.as_task_v2)


class RedactingAMQP(AMQP):  # type: ignore[misc]
    """Messages this app sends carry redacted argsrepr/kwargsrepr unless the caller set them."""

    def as_task_v2(self, *args: Any, **kwargs: Any) -> Any:
        bound = _AS_TASK_V2.bind(self, *args, **kwargs)
        given = bound.arguments
        patterns = _patterns(self.app)
        if given.get("argsrepr") is None:
            given["argsrepr"] = redacted_repr(tuple(given.get("args") or ()), patterns)
        if given.get("kwargsrepr") is None:
            given["kwargsrepr"] = redacted_repr(dict(given.get("kwargs") or {}), patterns)
        return super().as_task_v2(*bound.args[1:], **bound.kwargs)


class RedactingRequest(Request):  # type: ignore[misc]
    """A worker request whose reprs are recomputed, redacted, whatever the sender put."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        patterns = _patterns(self._app)
        self._argsrepr = redacted_repr(tuple(self._args or ()), patterns)
        self._kwargsrepr = redacted_repr(dict(self._kwargs or {}), patterns)
        # The pool process logs from the request dict: it gets the redacted reprs too.
        self._request_dict["argsrepr"] = self._argsrepr
        self._request_dict["kwargsrepr"] = self._kwargsrepr


class PoolApplyFilter(logging.Filter):
    """Celery's `TaskPool: Apply` debug line prints the whole message body: name and id only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("TaskPool: Apply"):
            args = record.args if isinstance(record.args, tuple) else ()
            request = args[1] if len(args) > 1 else ""
            record.msg = "TaskPool: Apply %s"
            record.args = (_task_of(request),)
        return True


def _task_of(pool_args: Any) -> str:
    """`name[id]` from the repr of the pool's arguments, or a placeholder."""
    text = str(pool_args)
    parts = text.strip("()").split(",", 2)
    if len(parts) >= 2:
        return f"{parts[0].strip(chr(39))}[{parts[1].strip().strip(chr(39))}]"
    return "<task>"


def install_log_filters() -> None:
    """Adds the filters to the loggers that would print task arguments."""
    logger = logging.getLogger("celery.pool")
    if not any(isinstance(f, PoolApplyFilter) for f in logger.filters):
        logger.addFilter(PoolApplyFilter())


class RedactingTask(Task):  # type: ignore[misc]
    """The base of every task: its worker requests redact their reprs."""

    Request = REDACTING_REQUEST
