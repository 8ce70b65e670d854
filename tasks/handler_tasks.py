"""Tasks a manager or beat sends by name: run a handler, terminate a session, maintenance."""

from __future__ import annotations

from typing import Any

from sokovan.admission.parse import refuse_arguments
from sokovan.admission.service import PublicTasks
from sokovan.errors import InvalidRequest
from sokovan.scheduler.handlers import handler_names
from tasks import names
from tasks.base import task
from tasks.runtime import WorkerRuntime, runtime


def _public(rt: WorkerRuntime) -> PublicTasks:
    return PublicTasks(
        rt.services.repository,
        rt.services.coordinator,
        rt.services.settings,
        secrets=rt.services.secret_environ,
        activity=rt.services.context.activity,
    )


@task(names.HANDLER_RUN)
def run_handler(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Starts one run of a handler (beat, manual, api or event trigger)."""
    rt = runtime()
    return rt.run(_public(rt).run_handler(args, kwargs))


def _handler_task(handler: str) -> Any:
    """Registers `sokovan.handler.<handler>`: HANDLER_RUN with `handler` fixed."""

    @task(names.handler_task(handler))
    def run_this_handler(*args: Any, **kwargs: Any) -> dict[str, Any]:
        """Starts one run of this handler (beat, manual, api or event trigger)."""
        if kwargs.get("handler", handler) != handler:
            raise InvalidRequest(f"this task runs {handler!r} only", field="handler")
        rt = runtime()
        return rt.run(_public(rt).run_handler(args, {**kwargs, "handler": handler}))

    return run_this_handler


# Flower and the events show each handler's runs under a task name of its own.
HANDLER_TASKS = {name: _handler_task(name) for name in handler_names()}


@task(names.SESSION_TERMINATE)
def terminate_session(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Cancels a PENDING session, or marks it TERMINATING and starts the terminate handler."""
    rt = runtime()
    return rt.run(_public(rt).terminate_session(args, kwargs))


@task(names.SESSION_TOUCH)
def touch_session(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Records that a manager saw the session in use now; reclaim's idle clock restarts."""
    rt = runtime()
    return rt.run(_public(rt).touch_session(args, kwargs))


@task(names.SESSION_CREATE)
def create_session(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Validates and stores a session, then starts image pulling for it at once."""
    rt = runtime()
    return rt.run(_public(rt).create_session(args, kwargs))


@task(names.AGENTS_SYNC)
def sync_agent_registry(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Copies agents' self-registrations into the agents table."""
    if refused := refuse_arguments(args, kwargs):
        return refused
    rt = runtime()
    return rt.run(_public(rt).sync_agents(rt.services.redis))


@task(names.MAINTENANCE_RECOVER)
def recover_runs(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Abandons runs past their deadline so the next run re-plans their targets."""
    if refused := refuse_arguments(args, kwargs):
        return refused
    rt = runtime()
    return {"abandoned": [int(r) for r in rt.run(rt.services.coordinator.recover())]}


@task(names.MAINTENANCE_PRUNE)
def prune_runs(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Deletes runs older than the retention, and secret variables no session needs."""
    if refused := refuse_arguments(args, kwargs):
        return refused
    rt = runtime()
    days = rt.services.settings.run_retention_days
    pruned = rt.run(rt.services.coordinator.prune(days))
    return {"pruned": pruned, "secrets_pruned": rt.services.secret_environ.prune()}
