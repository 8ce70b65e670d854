"""Registers every handler with the coordinator, and runs one agent batch of an operation."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sokovan.ports import FanOut
from sokovan.scheduler.handlers.sweep_stale_kernels import SweepStaleKernelsKernelHandler
from sokovan.scheduler.launcher import SessionLauncher
from sokovan.scheduler.launcher.agent_jobs import pull_images_on_agent
from sokovan.scheduler.launcher.creation import create_kernels_on_agent
from sokovan.scheduler.specs.launch import apply_created, pull_spec, start_spec
from sokovan.scheduler.specs.sweep import sweep_spec
from sokovan.scheduler.specs.terminate import terminate_spec
from sokovan.types import AgentId, ItemOutcome, Operation

if TYPE_CHECKING:
    from sokovan.bootstrap import Services

log = logging.getLogger(__name__)


def register_handlers(services: Services, fanout: FanOut) -> None:
    """Plugs each handler into the coordinator."""
    coordinator = services.coordinator
    settings = services.settings
    coordinator.register(terminate_spec(services.repository, services.terminator))
    sweeper = SweepStaleKernelsKernelHandler(
        services.terminator,
        max_stale_ratio=settings.sweep_max_stale_ratio,
        brake_min_kernels=settings.sweep_brake_min_kernels,
    )
    coordinator.register(sweep_spec(services.repository, sweeper))

    def make_launcher(dispatch: FanOut) -> SessionLauncher:
        return SessionLauncher(
            services.pool,
            dispatch,
            services.repository,
            services.secrets,
            services.network_plugins,
            default_network_driver=settings.network_default_driver,
            start_session_timeout=settings.start_session_timeout,
        )

    coordinator.register(pull_spec(services.repository, make_launcher, fanout))
    coordinator.register(
        start_spec(services.repository, make_launcher, fanout, settings.start_session_timeout)
    )


async def execute_batch(
    services: Services, operation: Operation, agent_id: AgentId, items: Sequence[Mapping[str, Any]]
) -> list[ItemOutcome]:
    """One agent's share of a fan-out; per-item failures come back as outcomes."""
    if operation == Operation.DESTROY_KERNELS:
        return await services.terminator.destroy_batch(agent_id, items)
    if operation == Operation.CHECK_AND_PULL:
        return await pull_images_on_agent(services.pool, agent_id, items)
    if operation == Operation.CREATE_KERNELS:
        outcomes = await create_kernels_on_agent(
            services.pool,
            services.secrets,
            agent_id,
            items,
            services.repository,
            start_timeout=services.settings.start_session_timeout,
        )
        try:
            await apply_created(services.repository, outcomes)
        except Exception as e:  # the run's completion applies them all the same
            log.warning("kernels created on agent %s not moved early: %s", agent_id, e)
        return outcomes
    raise ValueError(f"unknown operation {operation!r}")
