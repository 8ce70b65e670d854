"""What every task shares: this process's runtime, and refusals returned as results."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from sokovan.errors import SokovanError
from tasks.app import app
from tasks.deliveries import CountedTask
from tasks.liveness import stale_tick
from tasks.redacted_reprs import REDACTING_REQUEST
from tasks.runtime import WorkerRuntime, runtime

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
# A refusal's message is cut to this many characters in results and logs.
MAX_ERROR_TEXT = 2000


class SokovanTask(CountedTask):
    """Base of every task of the scheduler; it counts deliveries (tasks.deliveries)."""

    abstract = True
    # Worker requests recompute argsrepr/kwargsrepr redacted: no secret in events or logs.
    Request = REDACTING_REQUEST

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.request.called_directly and (why := stale_tick(self.request)):
            # Not a failure: nothing was missed that the next tick will not do.
            log.info("task %s[%s] dropped: %s", self.name, self.request.id, why)
            return {"dropped": True, "note": why}
        return super().__call__(*args, **kwargs)

    @property
    def rt(self) -> WorkerRuntime:
        """This worker process's runtime (event loop and services)."""
        return runtime()


def refusal(error: BaseException) -> dict[str, Any]:
    """The result of a task that refused its input: `{"error", "kind", "field"}` (see docs)."""
    return {
        "error": str(error)[:MAX_ERROR_TEXT],
        "kind": type(error).__name__,
        "field": getattr(error, "field", None),
    }


def task(name: str, **options: Any) -> Callable[[F], Any]:
    """Registers a task whose expected refusals (SokovanError) come back as results."""

    def register(fn: F) -> Any:
        @functools.wraps(fn)
        def body(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except SokovanError as e:
                log.warning("%s refused: %s", name, str(e)[:MAX_ERROR_TEXT])
                return refusal(e)

        return app.task(name=name, base=SokovanTask, **options)(body)

    return register
