"""What agents receive: KernelCreationConfig, environ, SSH keys (SC-LA-014..016)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sokovan.constants import SSH_KEY_COMMENT
from sokovan.errors import AgentRemoteError, UnknownImage
from sokovan.images import image_config_from_json, image_config_to_json
from sokovan.scheduler.launcher import (
    LocalBridgeNetworkPlugin,
    SessionLauncher,
    create_kernels_on_agent,
)
from sokovan.scheduler.launcher.environ import StoredKernelEnvirons
from sokovan.scheduler.launcher.status_data import error_info_of
from sokovan.stubs.agents import FakeAgentClientPool
from sokovan.stubs.fanout import InProcessFanOut
from sokovan.stubs.recorder import FakeSessionRecorder
from sokovan.stubs.secrets import FakeSecretEnviron, FakeSecretStore
from sokovan.types import (
    AgentBatch,
    AgentId,
    ClusterMode,
    ImageConfig,
    ItemOutcome,
    KernelId,
    KernelInfo,
    Operation,
    ResourceSlot,
    SessionId,
    SessionInfo,
)

IMAGE = ImageConfig(
    canonical="cr.backend.ai/stable/python:3.11-ubuntu22.04",
    architecture="aarch64",
    digest="sha256:abc",
    labels={"ai.backend.service-ports": "jupyter:http:8080"},
)
IMAGES = {IMAGE.canonical: IMAGE}

# The keys of Backend.AI's KernelCreationConfig TypedDict (ai.backend.common.types, 26.9.x).
AGENT_CONFIG_KEYS = {
    "image", "kernel_id", "session_id", "owner_user_id", "owner_project_id", "network_id",
    "auto_pull", "session_type", "cluster_mode", "cluster_role", "cluster_idx",
    "cluster_hostname", "local_rank", "uid", "main_gid", "supplementary_gids",
    "resource_slots", "resource_opts", "environ", "mounts", "package_directory",
    "idle_timeout", "bootstrap_script", "startup_command", "internal_data", "preopen_ports",
    "allocated_host_ports", "scaling_group", "agent_addr", "endpoint_id",
}  # fmt: skip
AGENT_IMAGE_KEYS = {
    "canonical", "project", "architecture", "digest", "repo_digest", "registry", "labels",
    "is_local", "auto_pull",
}  # fmt: skip


def full_session() -> SessionInfo:
    """A two-kernel single-node session with every launch field set."""
    sid = SessionId(uuid.uuid4())
    common: dict[str, Any] = {
        "session_id": sid,
        "agent_id": AgentId("a1"),
        "image": IMAGE.canonical,
        "occupied_slots": ResourceSlot({"cpu": Decimal("2"), "mem": Decimal("1073741824")}),
        "scaling_group": "gpu",
        "agent_addr": "tcp://10.0.0.1:6001",
        "uid": 1100,
        "main_gid": 1100,
        "supplementary_gids": (44,),
        "resource_opts": {"shmem": "64m"},
        "mounts": ({"name": "data", "kernel_path": "/home/work/data", "permission": "rw"},),
        "bootstrap_script": "echo hi",
        "startup_command": "python main.py",
        "internal_data": {"dotfiles": []},
        "preopen_ports": (8000,),
    }
    kernels = (
        KernelInfo(id=KernelId(uuid.uuid4()), cluster_role="main", cluster_idx=1,
                   cluster_hostname="main1", local_rank=0, **common),
        KernelInfo(id=KernelId(uuid.uuid4()), cluster_role="sub", cluster_idx=1,
                   cluster_hostname="sub1", local_rank=1, **common),
    )  # fmt: skip
    return SessionInfo(
        id=sid,
        kernels=kernels,
        name="train",
        cluster_mode=ClusterMode.SINGLE_NODE,
        user_uuid=uuid.uuid4(),
        access_key="AKIATEST",
        environ={"EXTRA": "1"},
        session_type="batch",
        user_email="u@example.com",
        user_name="u",
        idle_timeout=900,
    )


async def start_and_capture(
    session: SessionInfo, secret: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Starts the session through the launcher; returns the configs and cluster info a1 got.

    The dispatched items carry no environ: the agent's task resolves it (`environs`).
    """
    pool = FakeAgentClientPool()
    agent = pool.add("a1")
    secrets, recorder = FakeSecretStore(), FakeSessionRecorder()

    async def load(ids: Sequence[SessionId]) -> Sequence[SessionInfo]:
        return [session]

    environs = StoredKernelEnvirons(load, FakeSecretEnviron({session.id: secret or {}}))

    async def execute(operation: Operation, batch: AgentBatch) -> list[ItemOutcome]:
        assert all("environ" not in item["config"] for item in batch.items)
        return await create_kernels_on_agent(
            pool, secrets, batch.agent_id, batch.items, environs=environs
        )

    launcher = SessionLauncher(pool, InProcessFanOut(execute), recorder, secrets,
                               {"local": LocalBridgeNetworkPlugin()})  # fmt: skip
    await launcher._start_single_session(session, IMAGES)
    [call] = agent.calls_to("create_kernels")
    assert recorder.error_infos == {}
    return call.args[2], call.args[3]


async def test_sc_la_014_kernel_config_has_every_field_the_agent_reads() -> None:
    """SC-LA-014: each config carries Backend.AI's KernelCreationConfig keys, JSON-safe."""
    session = full_session()

    configs, cluster_info = await start_and_capture(session)

    assert [c["kernel_id"] for c in configs] == [str(k.id) for k in session.kernels]
    for config, kernel in zip(configs, session.kernels, strict=True):
        assert set(config) == AGENT_CONFIG_KEYS
        assert json.loads(json.dumps(config)) == config
        assert set(config["image"]) == AGENT_IMAGE_KEYS
        assert config["image"]["project"] == "stable"
        assert config["image"]["registry"]["name"] == "cr.backend.ai"
        assert config["session_id"] == str(session.id)
        assert config["resource_slots"] == {"cpu": "2", "mem": "1073741824"}
        assert (config["cluster_mode"], config["cluster_role"], config["cluster_idx"]) == (
            "single-node", kernel.cluster_role, kernel.cluster_idx,
        )  # fmt: skip
        assert config["cluster_hostname"] == kernel.cluster_hostname
        assert config["mounts"] == [dict(m) for m in kernel.mounts]
        assert (config["idle_timeout"], config["preopen_ports"]) == (900, [8000])
        assert config["session_type"] == "batch" and config["scaling_group"] == "gpu"
        assert config["uid"] == 1100 and config["supplementary_gids"] == [44]
        assert all(k.startswith("BACKENDAI_") or k == "EXTRA" for k in config["environ"])
    assert cluster_info["replicas"] == {"main": 1, "sub": 1}
    assert cluster_info["network_config"]["network_name"] == f"bai-singlenode-{session.id}"


async def test_sc_la_015_environ_describes_user_session_and_cluster() -> None:
    """SC-LA-015: BACKENDAI_* variables carry the user, session and each kernel's place."""
    session = full_session()

    configs, _ = await start_and_capture(session, {"API_TOKEN": "s3cr3t"})

    for config, kernel in zip(configs, session.kernels, strict=True):
        env = config["environ"]
        assert env["API_TOKEN"] == "s3cr3t"
        assert env["BACKENDAI_USER_UUID"] == str(session.user_uuid)
        assert env["BACKENDAI_SESSION_ID"] == str(session.id)
        assert env["BACKENDAI_SESSION_NAME"] == "train"
        assert env["BACKENDAI_ACCESS_KEY"] == "AKIATEST"
        assert env["BACKENDAI_CLUSTER_SIZE"] == str(len(session.kernels))
        assert env["BACKENDAI_CLUSTER_HOSTS"] == "main1,sub1"
        assert env["BACKENDAI_CLUSTER_REPLICAS"] == "main:1,sub:1"
        assert env["BACKENDAI_KERNEL_ID"] == str(kernel.id)
        assert env["BACKENDAI_KERNEL_IMAGE"] == IMAGE.canonical
        assert env["BACKENDAI_CLUSTER_ROLE"] == kernel.cluster_role
        assert env["BACKENDAI_CLUSTER_HOST"] == kernel.cluster_hostname
        assert env["BACKENDAI_CLUSTER_LOCAL_RANK"] == str(kernel.local_rank)
        assert env["BACKENDAI_SERVICE_PORTS"] == "jupyter:http:8080"
        assert env["BACKENDAI_PREOPEN_PORTS"] == "8000"
        assert env["EXTRA"] == "1"


async def test_sc_la_016_cluster_ssh_keypair_is_rsa_pem_and_openssh() -> None:
    """SC-LA-016: private key in PEM, public key in OpenSSH form with the cluster comment."""
    launcher = SessionLauncher(FakeAgentClientPool(), InProcessFanOut(_no_fanout),
                               FakeSessionRecorder(), FakeSecretStore(), {})  # fmt: skip

    keypair = await launcher._create_cluster_ssh_keypair()

    assert keypair.private_key.startswith("-----BEGIN RSA PRIVATE KEY-----")
    private = serialization.load_pem_private_key(keypair.private_key.encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert keypair.public_key.startswith("ssh-rsa ")
    assert keypair.public_key.endswith(f" {SSH_KEY_COMMENT}")
    public = serialization.load_ssh_public_key(keypair.public_key.encode())
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.public_numbers() == private.public_key().public_numbers()
    assert keypair.private_key not in repr(keypair)
    other = await launcher._create_cluster_ssh_keypair()
    assert other.private_key != keypair.private_key


async def _no_fanout(*_: object) -> list[ItemOutcome]:
    raise AssertionError("no dispatch expected")


def test_error_info_follows_backend_ai_status_data_shape() -> None:
    """Error infos carry src, name, repr and message; agent errors are marked as such."""
    local = error_info_of(UnknownImage("image x has no image config"))
    remote = error_info_of(AgentRemoteError("DockerError", "no such image"))
    group = error_info_of(ExceptionGroup("two agents", [ValueError("a"), KeyError("b")]))

    assert local == {
        "src": "other",
        "name": "UnknownImage",
        "repr": "UnknownImage('image x has no image config')",
        "message": "image x has no image config",
    }
    assert (remote["src"], remote["name"], remote["message"]) == (
        "agent", "DockerError", "no such image",
    )  # fmt: skip
    assert [e["name"] for e in group["collection"]] == ["ValueError", "KeyError"]


def test_image_config_json_round_trip_drops_no_field_we_keep() -> None:
    """The agent-shaped image JSON rebuilds the same ImageConfig, with no credentials."""
    data = image_config_to_json(IMAGE, "digest")

    assert image_config_from_json(json.loads(json.dumps(data))) == IMAGE
    assert data["registry"]["username"] is None and data["registry"]["password"] is None
    assert data["auto_pull"] == "digest" and data["architecture"] == "aarch64"
