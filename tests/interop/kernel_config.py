"""The smallest kernel configuration a Backend.AI agent (26.9, dummy backend) accepts."""

from __future__ import annotations

import uuid
from typing import Any

from sokovan.agent.client import image_config_to_wire
from sokovan.types import ImageConfig, KernelId, SessionId

# Keys the real agent 26.9.6 (dummy backend) fails without (KeyError), found by removing
# each key of a complete config in turn; every other key of KernelCreationConfig is optional.
REQUIRED_FIELDS = (
    "image",  # and inside it "canonical", "digest", "labels"
    "network_id",
    "session_type",
    "cluster_role",
    "uid",
    "main_gid",
    "supplementary_gids",
    "resource_slots",
    "resource_opts",
    "environ",
    "mounts",
    "internal_data",
    "allocated_host_ports",
    "scaling_group",
    "agent_addr",
)
REQUIRED_IMAGE_FIELDS = ("canonical", "digest", "labels")


def kernel_config(
    kernel_id: KernelId,
    session_id: SessionId,
    image: ImageConfig,
    agent_addr: str,
    *,
    slots: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A complete KernelCreationConfig mapping for one single-node main kernel."""
    return {
        "image": image_config_to_wire(image),
        "kernel_id": str(kernel_id),
        "session_id": str(session_id),
        "owner_user_id": str(uuid.UUID(int=1)),
        "owner_project_id": None,
        "network_id": f"net-{session_id}",
        "auto_pull": "digest",
        "session_type": "interactive",
        "cluster_mode": "single-node",
        "cluster_role": "main",
        "cluster_idx": 1,
        "cluster_hostname": "main1",
        "local_rank": 0,
        "uid": None,
        "main_gid": None,
        "supplementary_gids": [],
        "resource_slots": slots or {"cpu": "1", "mem": "1073741824"},
        "resource_opts": {},
        "environ": {},
        "mounts": [],
        "package_directory": [],
        "idle_timeout": 600,
        "bootstrap_script": None,
        "startup_command": None,
        "internal_data": None,
        "preopen_ports": [],
        "allocated_host_ports": [],
        "scaling_group": "default",
        "agent_addr": agent_addr,
        "endpoint_id": None,
    }


def cluster_info(network_name: str | None = None) -> dict[str, Any]:
    """ClusterInfo of a single-node session of one kernel."""
    return {
        "mode": "single-node",
        "size": 1,
        "replicas": {"main": 1},
        "network_config": {"mode": "bridge", "network_name": network_name} if network_name else {},
        "ssh_keypair": None,
        "cluster_ssh_port_mapping": None,
    }
