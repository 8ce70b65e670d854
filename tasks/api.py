"""Python API for a manager: the public tasks, sent by name (no domain import needed)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.result import AsyncResult

from sokovan.config import load_settings
from tasks import names
from tasks.app import create_app


class Scheduler:
    """Sends the public tasks; each method returns the task's AsyncResult."""

    def __init__(self, app: Celery | None = None) -> None:
        self.app = app or create_app(load_settings())

    def create_session(self, **request: Any) -> AsyncResult:
        """sokovan.session.create: image, kernels, cluster_mode, network_type, ... (README)."""
        return self.app.send_task(names.SESSION_CREATE, kwargs={"request": request})

    def terminate_session(
        self, session_id: str, reason: str = "USER_REQUESTED", force: bool = False
    ) -> AsyncResult:
        """sokovan.session.terminate: a no-op that says so for an already finished session;
        `force` gives kernels up at once when their agent cannot destroy them."""
        return self.app.send_task(
            names.SESSION_TERMINATE,
            kwargs={"session_id": session_id, "reason": reason, "force": force},
        )

    def run_handler(self, handler: str, budget: int | None = None) -> AsyncResult:
        """sokovan.handler.run with trigger api."""
        return self.app.send_task(
            names.HANDLER_RUN, kwargs={"handler": handler, "trigger": "api", "budget": budget}
        )
