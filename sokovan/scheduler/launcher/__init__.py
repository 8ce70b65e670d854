"""scheduler/launcher: pulls images and creates the kernels of sessions on their agents."""

from sokovan.scheduler.launcher.agent_jobs import pull_images_on_agent
from sokovan.scheduler.launcher.creation import create_kernels_on_agent
from sokovan.scheduler.launcher.keys import ClusterSSHKeyPair
from sokovan.scheduler.launcher.launcher import SessionLauncher
from sokovan.scheduler.launcher.network import (
    LocalBridgeNetworkPlugin,
    NetworkSetup,
    load_network_plugins,
)

__all__ = [
    "ClusterSSHKeyPair",
    "LocalBridgeNetworkPlugin",
    "NetworkSetup",
    "SessionLauncher",
    "create_kernels_on_agent",
    "load_network_plugins",
    "pull_images_on_agent",
]
