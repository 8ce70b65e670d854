"""Launches sessions: asks agents to pull images, then to create the kernels.

The launcher plans and dispatches; each agent's calls run as one fan-out task per agent
and run (`agent_jobs` pulls, `creation` creates kernels), and the outcomes move kernel
statuses. A session's start is bounded by the start timeout twice over: here while its
network and keys are prepared, and in its agent's task while its kernels are created.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sokovan.constants import CREATE_SESSIONS_PER_TASK, START_SESSION_TIMEOUT_SEC
from sokovan.errors import EmptySession, UnknownImage, describe_error
from sokovan.ports import AgentClientPool, FanOut, NetworkPlugin, SecretStore, SessionRecorder
from sokovan.scheduler.launcher.agent_jobs import plan_image_pulls, refused_outcome
from sokovan.scheduler.launcher.creation import KEYPAIR_FROM_STORE, KEYPAIR_FROM_WORKER
from sokovan.scheduler.launcher.kernel_config import (
    build_cluster_info,
    creation_items,
    resolve_image,
)
from sokovan.scheduler.launcher.keys import ClusterKeys, ClusterSSHKeyPair
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


@dataclass(frozen=True, slots=True)
class _Launch:
    """A prepared session: its create batches per agent, and kernels left out."""

    session: SessionInfo
    batches: list[AgentBatch]
    skipped: list[ItemOutcome]


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
        keys: ClusterKeys | None = None,
    ) -> None:
        self._pool = agent_client_pool
        self._fanout = fanout
        self._recorder = recorder
        self._secrets = secrets
        self._network_plugins = network_plugins
        self._default_driver = default_network_driver
        self._timeout = start_session_timeout
        self._keys = keys or ClusterKeys(None)

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
        """Starts every session concurrently, each bounded by the start timeout.

        The sessions' kernel creations leave as one fan-out: one task per agent, which
        still calls create_kernels once per session.
        """
        prepared = await asyncio.gather(
            *(self._prepare_bounded(s, image_configs) for s in sessions)
        )
        launches = [launch for launch in prepared if launch is not None]
        if not launches:
            return
        try:
            await self._dispatch(launches, run_id)
        except Exception as exc:
            log.warning(
                "create_kernels of run %s could not be dispatched for sessions %s: %s",
                run_id,
                [str(launch.session.id) for launch in launches],
                describe_error(exc, with_type=True),
            )
            await asyncio.gather(*(self._record_error(x.session, exc) for x in launches))

    async def _prepare_bounded(
        self, session: SessionInfo, image_configs: Mapping[str, ImageConfig]
    ) -> _Launch | None:
        """Prepares one session; a failure is stored as its error info, never raised."""
        try:
            async with asyncio.timeout(self._timeout):
                return await self._prepare_session(session, image_configs)
        except TimeoutError:
            log.warning("start of session %s timed out after %ss", session.id, self._timeout)
            await self._record_error(
                session, TimeoutError(f"session start exceeded {self._timeout}s")
            )
        except Exception as exc:
            log.warning(
                "start of session %s failed: %s",
                session.id,
                describe_error(exc, with_type=True),
                exc_info=True,
            )
            await self._record_error(session, exc)
        return None

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
        return await self._dispatch([await self._prepare_session(session, image_configs)], run_id)

    async def _prepare_session(
        self, session: SessionInfo, image_configs: Mapping[str, ImageConfig]
    ) -> _Launch:
        """Network, keypair and one create batch per agent; raises when the session cannot go."""
        if not session.kernels:
            raise EmptySession(f"session {session.id} has no kernels")
        _check_images(session, image_configs)
        network = await self._setup_network_configuration(session)
        by_agent, skipped = _group_by_agent(session)
        source = KEYPAIR_FROM_WORKER
        if len(by_agent) > 1:
            # Kernels on several agents share one keypair: it is stored encrypted, and only
            # the workers that call those agents read it back.
            keypair = await self._create_cluster_ssh_keypair()
            await self._secrets.put_ssh_keypair(session.id, keypair.private_key, keypair.public_key)
            source = KEYPAIR_FROM_STORE
        cluster_info = build_cluster_info(session, network)
        batches = [
            AgentBatch(
                agent_id,
                tuple(
                    {**item, "keypair_source": source}
                    for item in creation_items(session, kernels, image_configs, cluster_info)
                ),
            )
            for agent_id, kernels in by_agent.items()
        ]
        return _Launch(session, batches, skipped)

    async def _dispatch(self, launches: Sequence[_Launch], run_id: RunId) -> str:
        """One fan-out for all the sessions: one batch per agent (per CREATE_SESSIONS_PER_TASK)."""
        batches = _merge_batches(launches)
        skipped = [outcome for launch in launches for outcome in launch.skipped]
        fanout_id = await self._fanout.dispatch(run_id, Operation.CREATE_KERNELS, batches, skipped)
        log.info(
            "run %s: create_kernels of %s session(s) dispatched in %s task(s) (%s)",
            run_id,
            len(launches),
            len(batches),
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
        """A fresh keypair for the session's kernels to reach each other.

        Used for sessions spread over agents; a session on one agent gets the same kind
        of keypair from the worker that calls its agent (`creation`). Pooled when the
        pool has one, made now otherwise.
        """
        keypair = await self._keys.one()
        await self._keys.used()
        return keypair


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


def _merge_batches(launches: Sequence[_Launch]) -> list[AgentBatch]:
    """The sessions' batches merged per agent, at most CREATE_SESSIONS_PER_TASK sessions each."""
    chunks: dict[AgentId, list[list[JSON]]] = {}
    counts: dict[AgentId, int] = {}
    for launch in launches:
        for batch in launch.batches:
            agent_chunks = chunks.setdefault(batch.agent_id, [[]])
            if counts.get(batch.agent_id, 0) == CREATE_SESSIONS_PER_TASK:
                agent_chunks.append([])
                counts[batch.agent_id] = 0
            agent_chunks[-1].extend(batch.items)
            counts[batch.agent_id] = counts.get(batch.agent_id, 0) + 1
    return [
        AgentBatch(agent, tuple(c)) for agent, agent_chunks in chunks.items() for c in agent_chunks
    ]


def _group_by_agent(
    session: SessionInfo,
) -> tuple[dict[AgentId, list[KernelInfo]], list[ItemOutcome]]:
    by_agent: dict[AgentId, list[KernelInfo]] = {}
    skipped: list[ItemOutcome] = []
    for kernel in session.kernels:
        if kernel.agent_id is None:
            log.warning("kernel %s of session %s has no agent: not created", kernel.id, session.id)
            skipped.append(refused_outcome(kernel, "no agent assigned", skipped=True))
            continue
        by_agent.setdefault(kernel.agent_id, []).append(kernel)
    return by_agent, skipped
