"""Python API for a manager: the public tasks, sent by name (no domain import needed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from sokovan.config import Settings, load_settings
from sokovan.db.engine import create_engine
from sokovan.db.secret_environ import SqlSecretEnviron
from sokovan.db.secrets import load_or_create_key
from tasks import names
from tasks.app import create_app


def secret_environ_store(settings: Settings) -> SqlSecretEnviron:
    """The encrypted store a client writes secret variables to before it sends a request."""
    key = load_or_create_key(settings.secret_key, settings.var_dir)
    engine = create_engine(settings.effective_database_url)
    return SqlSecretEnviron(engine, key, settings.secret_env_patterns)


class Scheduler:
    """Sends the public tasks; each method returns the task's AsyncResult.

    Secret variables of a session are written encrypted to the database first and the
    request carries only their references, so no message holds a secret value.
    """

    def __init__(self, app: Celery | None = None, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.app = app or create_app(self.settings)
        self._secrets: SqlSecretEnviron | None = None

    @property
    def secrets(self) -> SqlSecretEnviron:
        if self._secrets is None:
            self._secrets = secret_environ_store(self.settings)
        return self._secrets

    def create_session(
        self, *, secret_environ: Mapping[str, str] | None = None, **request: Any
    ) -> AsyncResult:
        """sokovan.session.create: image, kernels, cluster_mode, network_type, ... (README)."""
        environ = {str(k): str(v) for k, v in (request.get("environ") or {}).items()}
        if environ or secret_environ:
            request["environ"] = self.secrets.stash(environ, secret_environ)
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

    def get_session(self, session_id: str) -> AsyncResult:
        """sokovan.session.get: the session with its kernels (`session show --json`)."""
        return self.app.send_task(names.SESSION_GET, kwargs={"session_id": session_id})

    def list_sessions(
        self, statuses: list[str] | None = None, agent: str | None = None, limit: int = 50
    ) -> AsyncResult:
        """sokovan.session.list: newest first (`session list --json`)."""
        return self.app.send_task(
            names.SESSION_LIST,
            kwargs={"statuses": statuses or [], "agent": agent, "limit": limit},
        )

    def get_run(self, run_id: int, items_limit: int = 1000) -> AsyncResult:
        """sokovan.run.get: the run with its counts and items (`runs show --json`)."""
        return self.app.send_task(
            names.RUN_GET, kwargs={"run_id": run_id, "items_limit": items_limit}
        )
