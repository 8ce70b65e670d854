"""Launches sessions: asks agents to pull images, then to create the kernels.

The launcher plans and dispatches; each agent's call runs as one fan-out task
(`agent_jobs`), and the run's completion moves kernel statuses from the outcomes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from sokovan.constants import START_SESSION_TIMEOUT_SEC
from sokovan.errors import EmptySession, UnknownImage
from sokovan.ports import AgentClientPool, FanOut, NetworkPlugin, SecretStore, SessionRecorder
from sokovan.scheduler.launcher.agent_jobs import describe, pull_batch
from sokovan.scheduler.launcher.kernel_config import (
    build_cluster_info,
    creation_items,
    resolve_image,
)
from sokovan.scheduler.launcher.keys import ClusterSSHKeyPair, create_cluster_ssh_keypair
from sokovan.scheduler.launcher.network import NetworkSetup, setup_network
from sokovan.scheduler.launcher.status_data import error_info_of
from sokovan.types import (
    JSON,
    AgentBatch,
    AgentId,
    ImageConfig,
    ItemOutcome,
    KernelInfo,
    NetworkType,
    Operation,
    RunId,
    SessionInfo,
)

log = logging.getLogger(__name__)

# The run id of a call made outside any recorded run (tests, one-off scripts).
NO_RUN = RunId(0)


class SessionLauncher:
    """Pulls images for scheduled sessions and creates the kernels of prepared ones."""

    def __init__(
        self,
        agent_client_pool: AgentClientPool,
        fanout: FanOut,
        recorder: SessionRecorder,
        secrets: SecretStore,
        network_plugins: Mapping[str, NetworkPlugin],
        default_network_driver: str = "local",
        start_session_timeout: float = START_SESSION_TIMEOUT_SEC,
    ) -> None:
        self._pool = agent_client_pool
        self._fanout = fanout
        self._recorder = recorder
        self._secrets = secrets
        self._network_plugins = network_plugins
        self._default_driver = default_network_driver
        self._timeout = start_session_timeout

    async def trigger_image_pulling(
        self,
        sessions: Sequence[SessionInfo],
        image_configs: Mapping[str, ImageConfig],
        *,
        run_id: RunId = NO_RUN,
    ) -> None:
        """Dispatches one check_and_pull per agent with that agent's images, each once."""
        batches, refused = plan_image_pulls(sessions, image_configs)
        if not batches and not refused:
            log.debug("no image to pull (run %s)", run_id)
            return
        await self._fanout.dispatch(run_id, Operation.CHECK_AND_PULL, batches, refused)

    async def start_sessions_for_handler(
        self,
        sessions: Sequence[SessionInfo],
        image_configs: Mapping[str, ImageConfig],
        *,
        run_id: RunId = NO_RUN,
    ) -> None:
        """Starts every session concurrently, each bounded by the start timeout."""
        await asyncio.gather(*(self._start_bounded(s, image_configs, run_id) for s in sessions))

    async def _start_bounded(
        self, session: SessionInfo, image_configs: Mapping[str, ImageConfig], run_id: RunId
    ) -> None:
        """Starts one session; a failure is stored as its error info, never raised."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._start_single_session(session, image_configs, run_id=run_id)
        except TimeoutError:
            log.warning("start of session %s timed out after %ss", session.id, self._timeout)
            await self._record_error(
                session, TimeoutError(f"session start exceeded {self._timeout}s")
            )
        except Exception as exc:
            log.warning("start of session %s failed: %s", session.id, describe(exc), exc_info=True)
            await self._record_error(session, exc)

    async def _record_error(self, session: SessionInfo, exc: BaseException) -> None:
        # The session keeps its status: the coordinator's timeout detection decides its fate.
        try:
            await self._recorder.update_session_error_info(session.id, error_info_of(exc))
        except Exception:
            log.warning("error info of session %s could not be stored", session.id, exc_info=True)

    async def _start_single_session(
        self,
        session: SessionInfo,
        image_configs: Mapping[str, ImageConfig],
        *,
        run_id: RunId = NO_RUN,
    ) -> str:
        """Sets up the network and keys, then dispatches one create_kernels per agent."""
        if not session.kernels:
            raise EmptySession(f"session {session.id} has no kernels")
        _check_images(session, image_configs)
        network = await self._setup_network_configuration(session)
        keypair = await self._create_cluster_ssh_keypair()
        # Only the worker that calls the agent reads the private key back.
        await self._secrets.put_ssh_keypair(session.id, keypair.private_key, keypair.public_key)
        by_agent, skipped = _group_by_agent(session)
        cluster_info = build_cluster_info(session, network)
        batches = [
            AgentBatch(agent_id, creation_items(session, kernels, image_configs, cluster_info))
            for agent_id, kernels in by_agent.items()
        ]
        fanout_id = await self._fanout.dispatch(run_id, Operation.CREATE_KERNELS, batches, skipped)
        log.info(
            "session %s: create_kernels dispatched to agents %s (%s)",
            session.id,
            sorted(by_agent),
            fanout_id,
        )
        return fanout_id

    async def _setup_network_configuration(self, session: SessionInfo) -> NetworkSetup:
        """Creates or finds the session's network and stores its id on the session."""
        network = await setup_network(
            session, self._pool, self._network_plugins, self._default_driver
        )
        if session.network_type is NetworkType.PERSISTENT:
            # The session's network id names the pre-created network; overwriting it
            # with the derived name would break the next start attempt.
            return network
        await self._recorder.update_session_network_id(session.id, network.network_name)
        return network

    async def _create_cluster_ssh_keypair(self) -> ClusterSSHKeyPair:
        """A fresh keypair for the session's kernels to reach each other."""
        return await create_cluster_ssh_keypair()


def plan_image_pulls(
    sessions: Sequence[SessionInfo], image_configs: Mapping[str, ImageConfig]
) -> tuple[list[AgentBatch], list[ItemOutcome]]:
    """One pull batch per agent, and outcomes for kernels that cannot be pulled for."""
    images: dict[AgentId, dict[str, ImageConfig]] = {}
    waiting: dict[AgentId, list[JSON]] = {}
    refused: list[ItemOutcome] = []
    for session in sessions:
        for kernel in session.kernels:
            if kernel.agent_id is None:
                log.warning(
                    "kernel %s of session %s has no agent: no image pull", kernel.id, session.id
                )
                refused.append(_refused(kernel, "no agent assigned", skipped=True))
                continue
            config = image_configs.get(kernel.image)
            if config is None:
                log.warning(
                    "kernel %s of session %s: image %r has no image config",
                    kernel.id,
                    session.id,
                    kernel.image,
                )
                refused.append(_refused(kernel, f"UnknownImage: {kernel.image}", skipped=False))
                continue
            images.setdefault(kernel.agent_id, {}).setdefault(kernel.image, config)
            waiting.setdefault(kernel.agent_id, []).append(
                {"kernel_id": str(kernel.id), "session_id": str(session.id), "image": kernel.image}
            )
    batches = [pull_batch(agent, images[agent], waiting[agent]) for agent in images]
    return batches, refused


def _refused(kernel: KernelInfo, error: str, *, skipped: bool) -> ItemOutcome:
    return ItemOutcome(
        item_id=str(kernel.id),
        agent_id=kernel.agent_id,
        ok=False,
        error=error,
        detail={"session_id": str(kernel.session_id), "image": kernel.image},
        skipped=skipped,
    )


def _check_images(session: SessionInfo, image_configs: Mapping[str, ImageConfig]) -> None:
    """Refuses the session before anything is created when an image is unresolved."""
    for kernel in session.kernels:
        try:
            resolve_image(kernel, image_configs)
        except UnknownImage:
            log.error(
                "session %s: image %r of kernel %s was not resolved",
                session.id,
                kernel.image,
                kernel.id,
            )
            raise


def _group_by_agent(
    session: SessionInfo,
) -> tuple[dict[AgentId, list[KernelInfo]], list[ItemOutcome]]:
    by_agent: dict[AgentId, list[KernelInfo]] = {}
    skipped: list[ItemOutcome] = []
    for kernel in session.kernels:
        if kernel.agent_id is None:
            log.warning("kernel %s of session %s has no agent: not created", kernel.id, session.id)
            skipped.append(_refused(kernel, "no agent assigned", skipped=True))
            continue
        by_agent.setdefault(kernel.agent_id, []).append(kernel)
    return by_agent, skipped
