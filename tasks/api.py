"""Python API for a manager: the public tasks, sent by name (no domain import needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from sokovan import constants as C
from sokovan.bootstrap import Adapters
from sokovan.config import Settings, load_settings
from tasks import names
from tasks.app import create_app


class Scheduler:
    """Sends the public tasks; each method returns the task's AsyncResult.

    Secret variables of a session are written encrypted to the database first and the
    request carries only their references, so no message holds a secret value. The database
    is opened (through `adapters`, or ones of its own) only when a request has variables.
    """

    def __init__(
        self,
        app: Celery | None = None,
        settings: Settings | None = None,
        adapters: Adapters | None = None,
    ) -> None:
        self.settings = settings or (adapters.settings if adapters else load_settings())
        self.app = app or create_app(self.settings)
        self.adapters = adapters or Adapters(self.settings)

    def create_session(
        self, *, secret_environ: Mapping[str, str] | None = None, **request: Any
    ) -> AsyncResult:
        """sokovan.session.create: image, kernels, cluster_mode, network_type, ... (see docs)."""
        environ = {str(k): str(v) for k, v in (request.get("environ") or {}).items()}
        if environ or secret_environ:
            request["environ"] = self.adapters.secret_environ.stash(environ, secret_environ)
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

    def terminate_sessions(
        self, session_ids: Sequence[str], reason: str = "USER_REQUESTED", force: bool = False
    ) -> AsyncResult:
        """sokovan.sessions.terminate: up to 1,000 sessions in one message, each answered as
        terminate_session answers it, with one terminate run for the lot."""
        return self.app.send_task(
            names.SESSIONS_TERMINATE,
            kwargs={"session_ids": list(session_ids), "reason": reason, "force": force},
        )

    def touch_session(self, session_id: str) -> AsyncResult:
        """sokovan.session.touch: the session was in use just now (reclaim's idle clock)."""
        return self.app.send_task(names.SESSION_TOUCH, kwargs={"session_id": session_id})

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

    def register_agent(
        self, agent_id: str, rpc_addr: str, *, scaling_group: str = "default", **capacity: Any
    ) -> AsyncResult:
        """sokovan.agents.register: an agent that does not register itself (cpu=, mem=)."""
        kwargs: dict[str, Any] = {
            "agent_id": agent_id,
            "rpc_addr": rpc_addr,
            "scaling_group": scaling_group,
        }
        if capacity:
            kwargs["capacity"] = capacity
        return self.app.send_task(names.AGENTS_REGISTER, kwargs=kwargs)

    def cordon_agent(self, agent_id: str) -> AsyncResult:
        """sokovan.agents.cordon: no new kernel on the agent; its sessions run on."""
        return self.app.send_task(names.AGENTS_CORDON, kwargs={"agent_id": agent_id})

    def uncordon_agent(self, agent_id: str) -> AsyncResult:
        """sokovan.agents.uncordon: placement may use the agent again."""
        return self.app.send_task(names.AGENTS_UNCORDON, kwargs={"agent_id": agent_id})

    def drain_agent(
        self,
        agent_id: str,
        deadline_seconds: float = C.DRAIN_DEADLINE_SEC,
        wait_for_sessions: bool = False,
    ) -> AsyncResult:
        """sokovan.agents.drain: cordon, then end the agent's sessions by the deadline."""
        return self.app.send_task(
            names.AGENTS_DRAIN,
            kwargs={
                "agent_id": agent_id,
                "deadline_seconds": deadline_seconds,
                "wait_for_sessions": wait_for_sessions,
            },
        )
