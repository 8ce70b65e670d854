"""Node maintenance a manager sends by name: register, cordon, uncordon and drain an agent."""

from __future__ import annotations

from typing import Any

from sokovan.admission.agents import AgentTasks
from tasks import names
from tasks.base import task
from tasks.runtime import WorkerRuntime, runtime


def _agents(rt: WorkerRuntime) -> AgentTasks:
    return AgentTasks(rt.services.repository, rt.services.coordinator)


@task(names.AGENTS_REGISTER)
def register_agent(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Registers an agent that does not register itself (a real Backend.AI agent)."""
    rt = runtime()
    return rt.run(_agents(rt).register(args, kwargs))


@task(names.AGENTS_CORDON)
def cordon_agent(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Stops new placements on an agent; its sessions run on."""
    rt = runtime()
    return rt.run(_agents(rt).cordon(args, kwargs))


@task(names.AGENTS_UNCORDON)
def uncordon_agent(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Lets placement use an agent again."""
    rt = runtime()
    return rt.run(_agents(rt).uncordon(args, kwargs))


@task(names.AGENTS_DRAIN)
def drain_agent(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Cordons an agent and ends its sessions by the drain's deadline."""
    rt = runtime()
    return rt.run(_agents(rt).drain(args, kwargs))
