"""Inter-container networks of a session, and the network plugins that make them.

A network plugin is any object with `async create_network(identifier) -> {"network_id",
"options"}` and `async destroy_network(network_id)` (`sokovan.ports.NetworkPlugin`),
constructible without arguments. Plugins are found through the entry-point group
`sokovan.network_plugins`; a package that ships an overlay driver declares, in its
pyproject.toml::

    [project.entry-points."sokovan.network_plugins"]
    overlay = "mypkg.overlay:OverlayNetworkPlugin"

and `SOKOVAN_NETWORK_DEFAULT_DRIVER=overlay` selects it for multi-node sessions. The
`options` it returns go to every agent as the cluster's `network_config` (Backend.AI
agents read `mode` and `network_name` from it), and `network_id` is stored on the session
so the network can be destroyed with the session.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Final

from sokovan.errors import InvalidRequest, UnknownNetworkDriver
from sokovan.ports import AgentClientPool, NetworkPlugin
from sokovan.types import ClusterMode, KernelInfo, NetworkType, SessionInfo

log = logging.getLogger(__name__)

# Prefix of the agent-local bridge made for a single-node multi-kernel session.
SINGLE_NODE_NETWORK_PREFIX: Final = "bai-singlenode-"

ENTRY_POINT_GROUP = "sokovan.network_plugins"


@dataclass(frozen=True, slots=True)
class NetworkSetup:
    """The network a session's kernels join, as the agents are told about it."""

    network_name: str | None
    network_config: Mapping[str, Any] = field(default_factory=dict)
    # cluster hostname -> (agent host, host port of the kernel's sshd); HOST mode only.
    cluster_ssh_port_mapping: Mapping[str, tuple[str, int]] | None = None


class LocalBridgeNetworkPlugin:
    """A network driver for clusters on one machine: ids are names of a local bridge."""

    def __init__(self) -> None:
        self._networks: dict[str, dict[str, Any]] = {}

    async def create_network(self, identifier: str) -> Mapping[str, Any]:
        """Returns the network of `identifier`, creating it on first use."""
        network_id = f"bai-local-{identifier or uuid.uuid4()}"
        options = self._networks.setdefault(
            network_id, {"mode": "bridge", "network_name": network_id, "network_id": network_id}
        )
        return {"network_id": network_id, "options": dict(options)}

    async def destroy_network(self, network_id: str) -> None:
        """Forgets the network; an unknown id is already gone."""
        self._networks.pop(network_id, None)

    @property
    def networks(self) -> list[str]:
        """Ids of the networks that exist."""
        return list(self._networks)


def load_network_plugins(
    discovered: Iterable[EntryPoint] | None = None,
) -> dict[str, NetworkPlugin]:
    """Instantiates the built-in plugin and every plugin registered under the entry-point group."""
    plugins: dict[str, NetworkPlugin] = {"local": LocalBridgeNetworkPlugin()}
    points = entry_points(group=ENTRY_POINT_GROUP) if discovered is None else discovered
    for point in points:
        try:
            plugins[point.name] = point.load()()
        except Exception:
            log.warning(
                "network plugin %s (%s) could not be loaded", point.name, point.value, exc_info=True
            )
    return plugins


async def setup_network(
    session: SessionInfo,
    pool: AgentClientPool,
    plugins: Mapping[str, NetworkPlugin],
    default_driver: str,
) -> NetworkSetup:
    """Creates or looks up the network the session's kernels join."""
    match session.network_type:
        case NetworkType.PERSISTENT:
            return _persistent_network(session)
        case NetworkType.HOST:
            return await _host_network(session, pool)
        case _:
            return await _volatile_network(session, pool, plugins, default_driver)


def _persistent_network(session: SessionInfo) -> NetworkSetup:
    if not session.network_id:
        log.warning("session %s has a persistent network but no network id", session.id)
        return NetworkSetup(network_name=None)
    name = f"persistent-{session.network_id}"
    return NetworkSetup(name, {"mode": "bridge", "network_name": name})


async def _volatile_network(
    session: SessionInfo,
    pool: AgentClientPool,
    plugins: Mapping[str, NetworkPlugin],
    default_driver: str,
) -> NetworkSetup:
    if session.cluster_mode == ClusterMode.MULTI_NODE:
        return await _plugin_network(session, plugins, default_driver)
    if len(session.kernels) <= 1:
        # One kernel talks to no peer: it stays on the agent's default network.
        return NetworkSetup(network_name=None)
    name = f"{SINGLE_NODE_NETWORK_PREFIX}{session.id}"
    first = session.kernels[0]
    if first.agent_id is None:
        raise InvalidRequest(f"kernel {first.id} of session {session.id} has no agent")
    async with pool.acquire(first.agent_id) as client:
        await client.create_local_network(name)
    return NetworkSetup(name, {"mode": "bridge", "network_name": name})


async def _plugin_network(
    session: SessionInfo, plugins: Mapping[str, NetworkPlugin], driver: str
) -> NetworkSetup:
    plugin = plugins.get(driver)
    if plugin is None:
        available = sorted(plugins)
        log.error("network plugin %r not found; available plugins: %s", driver, available)
        raise UnknownNetworkDriver(
            f"Network plugin '{driver}' not found. Available plugins: {available}. "
            f"Install a package that registers it under the '{ENTRY_POINT_GROUP}' entry points."
        )
    info = await plugin.create_network(str(session.id))
    return NetworkSetup(str(info["network_id"]), dict(info.get("options") or {}))


async def _host_network(session: SessionInfo, pool: AgentClientPool) -> NetworkSetup:
    if len(session.kernels) <= 1:
        return NetworkSetup("host", {"mode": "host"})
    mapping: dict[str, tuple[str, int]] = {}
    for kernel in session.kernels:
        if kernel.agent_id is None:
            log.warning("kernel %s of session %s has no agent: no SSH port", kernel.id, session.id)
            continue
        async with pool.acquire(kernel.agent_id) as client:
            port = await client.assign_port()
        # Agents look their sshd port up by the kernel's cluster hostname.
        mapping[kernel.cluster_hostname] = (_agent_host(kernel), port)
    return NetworkSetup("host", {"mode": "host"}, mapping)


def _agent_host(kernel: KernelInfo) -> str:
    """The host part of `tcp://host:port`; localhost when the address is unknown."""
    if not kernel.agent_addr:
        return "localhost"
    return kernel.agent_addr.split("://", 1)[-1].rsplit(":", 1)[0]
