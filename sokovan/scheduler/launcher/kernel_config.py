"""What an agent's create_kernels receives for each kernel and for the whole cluster.

The shapes follow Backend.AI's `KernelCreationConfig` and `ClusterInfo` (agent 26.9.x),
kept JSON-safe: ids and resource amounts are strings, tuples are lists.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

from sokovan.errors import UnknownImage
from sokovan.images import image_config_to_json
from sokovan.scheduler.launcher.network import NetworkSetup
from sokovan.types import JSON, ImageConfig, KernelInfo, SessionInfo

# Launcher. Kernel creation pins images by digest, as Backend.AI's launcher does.
KERNEL_AUTO_PULL: Final = "digest"

SERVICE_PORTS_LABEL = "ai.backend.service-ports"


def replicas_of(session: SessionInfo) -> dict[str, int]:
    """Kernel count per cluster role."""
    return dict(sorted(Counter(k.cluster_role for k in session.kernels).items()))


def hostname_of(kernel: KernelInfo) -> str:
    """The kernel's hostname inside the cluster."""
    return kernel.cluster_hostname or f"{kernel.cluster_role}{kernel.cluster_idx}"


def session_environ(session: SessionInfo) -> dict[str, str]:
    """Environment variables shared by every kernel of the session."""
    first_ports = session.kernels[0].preopen_ports if session.kernels else ()
    return {
        **session.environ,
        "BACKENDAI_USER_UUID": str(session.user_uuid),
        "BACKENDAI_USER_EMAIL": session.user_email,
        "BACKENDAI_USER_NAME": session.user_name,
        "BACKENDAI_SESSION_ID": str(session.id),
        "BACKENDAI_SESSION_NAME": session.name,
        "BACKENDAI_CLUSTER_SIZE": str(len(session.kernels)),
        "BACKENDAI_CLUSTER_REPLICAS": ",".join(f"{r}:{n}" for r, n in replicas_of(session).items()),
        "BACKENDAI_CLUSTER_HOSTS": ",".join(hostname_of(k) for k in session.kernels),
        "BACKENDAI_ACCESS_KEY": session.access_key,
        "BACKENDAI_PREOPEN_PORTS": ",".join(str(p) for p in first_ports),
    }


def kernel_environ(kernel: KernelInfo, image: ImageConfig, shared: Mapping[str, str]) -> JSON:
    """Environment variables of one kernel: the shared ones plus its place in the cluster."""
    return {
        **shared,
        "BACKENDAI_KERNEL_ID": str(kernel.id),
        "BACKENDAI_KERNEL_IMAGE": kernel.image,
        "BACKENDAI_CLUSTER_ROLE": kernel.cluster_role,
        "BACKENDAI_CLUSTER_IDX": str(kernel.cluster_idx),
        "BACKENDAI_CLUSTER_LOCAL_RANK": str(kernel.local_rank),
        "BACKENDAI_CLUSTER_HOST": hostname_of(kernel),
        "BACKENDAI_SERVICE_PORTS": str(image.labels.get(SERVICE_PORTS_LABEL, "")),
    }


def resolve_image(kernel: KernelInfo, image_configs: Mapping[str, ImageConfig]) -> ImageConfig:
    """The kernel's image config; raises UnknownImage when it was not resolved."""
    config = image_configs.get(kernel.image)
    if config is None:
        raise UnknownImage(
            f"image {kernel.image!r} of kernel {kernel.id} (session {kernel.session_id}) "
            "has no image config"
        )
    return config


def build_kernel_config(
    session: SessionInfo,
    kernel: KernelInfo,
    image: ImageConfig,
    shared_environ: Mapping[str, str] | None = None,
) -> JSON:
    """One kernel's KernelCreationConfig as JSON; without `environ` when none is given."""
    config: JSON = {
        "image": image_config_to_json(image, KERNEL_AUTO_PULL),
        "kernel_id": str(kernel.id),
        "session_id": str(session.id),
        "owner_user_id": str(session.user_uuid),
        "owner_project_id": None,
        # Backend.AI's agents name the kernel's network endpoint after the session.
        "network_id": str(session.id),
        "auto_pull": KERNEL_AUTO_PULL,
        "session_type": session.session_type,
        "cluster_mode": session.cluster_mode.value,
        "cluster_role": kernel.cluster_role,
        "cluster_idx": kernel.cluster_idx,
        "cluster_hostname": hostname_of(kernel),
        "local_rank": kernel.local_rank,
        "uid": kernel.uid,
        "main_gid": kernel.main_gid,
        "supplementary_gids": list(kernel.supplementary_gids),
        "resource_slots": kernel.occupied_slots.to_json(),
        "resource_opts": dict(kernel.resource_opts),
        "environ": kernel_environ(kernel, image, shared_environ or {}),
        "mounts": [dict(m) for m in kernel.mounts],
        "package_directory": [],
        "idle_timeout": int(session.idle_timeout),
        "bootstrap_script": kernel.bootstrap_script,
        "startup_command": kernel.startup_command,
        "internal_data": None if kernel.internal_data is None else dict(kernel.internal_data),
        "preopen_ports": list(kernel.preopen_ports),
        # The agent fills these in when it binds ports.
        "allocated_host_ports": [],
        "scaling_group": kernel.scaling_group,
        "agent_addr": kernel.agent_addr or "",
        "endpoint_id": None,
    }
    if shared_environ is None:
        del config["environ"]
    return config


def build_cluster_info(session: SessionInfo, network: NetworkSetup) -> JSON:
    """The session's ClusterInfo as JSON, without the SSH keypair (resolved by the worker)."""
    mapping = network.cluster_ssh_port_mapping
    return {
        "mode": session.cluster_mode.value,
        "size": len(session.kernels),
        "replicas": replicas_of(session),
        "network_config": dict(network.network_config),
        "ssh_keypair": None,
        "cluster_ssh_port_mapping": (
            None if mapping is None else {h: [host, port] for h, (host, port) in mapping.items()}
        ),
    }


def creation_items(
    session: SessionInfo,
    kernels: list[KernelInfo],
    image_configs: Mapping[str, ImageConfig],
    cluster_info: Mapping[str, Any],
) -> tuple[JSON, ...]:
    """One create item per kernel: what the per-agent task needs, minus any environment.

    The worker that calls the agent resolves each kernel's environ from SQL (`environ`),
    so no task message, result or event carries a user's variables.
    """
    return tuple(
        {
            "session_id": str(session.id),
            "kernel_id": str(kernel.id),
            "config": build_kernel_config(session, kernel, resolve_image(kernel, image_configs)),
            "cluster_info": dict(cluster_info),
        }
        for kernel in kernels
    )
