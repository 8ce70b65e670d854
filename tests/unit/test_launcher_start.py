"""SessionLauncher.start_sessions_for_handler (SC-LA-005..008, SC-LA-017, SC-LA-018)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from sokovan.errors import AgentError, UnknownImage
from sokovan.ports import NetworkPlugin
from sokovan.scheduler.launcher import (
    ClusterSSHKeyPair,
    LocalBridgeNetworkPlugin,
    SessionLauncher,
    create_kernels_on_agent,
)
from sokovan.scheduler.launcher.environ import StoredKernelEnvirons
from sokovan.scheduler.launcher.keys import generate_cluster_ssh_keypair
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
    RunId,
    SessionId,
    SessionInfo,
)

IMAGES = {"image1": ImageConfig(canonical="image1", digest="sha256:1")}


@functools.cache
def one_keypair() -> ClusterSSHKeyPair:
    return generate_cluster_ssh_keypair()


class QuickKeysLauncher(SessionLauncher):
    """Reuses one keypair: RSA generation is slow and is tested on its own (SC-LA-016)."""

    async def _create_cluster_ssh_keypair(self) -> ClusterSSHKeyPair:
        return one_keypair()


@dataclass
class Kit:
    launcher: SessionLauncher
    pool: FakeAgentClientPool
    fanout: InProcessFanOut
    recorder: FakeSessionRecorder
    secrets: FakeSecretStore


def make_kit(
    agents: tuple[str, ...] = ("a1",),
    *,
    timeout: float = 60.0,
    plugins: Mapping[str, NetworkPlugin] | None = None,
    real_keys: bool = False,
    sessions: tuple[SessionInfo, ...] = (),
) -> Kit:
    """Without `sessions`, kernels get no environ (their configs go to the agent as built)."""
    pool = FakeAgentClientPool()
    for agent in agents:
        pool.add(agent)
    recorder, secrets = FakeSessionRecorder(), FakeSecretStore()

    async def execute(operation: Operation, batch: AgentBatch) -> list[ItemOutcome]:
        assert operation is Operation.CREATE_KERNELS

        async def load(ids: Sequence[SessionId]) -> Sequence[SessionInfo]:
            return sessions

        environs = StoredKernelEnvirons(load, FakeSecretEnviron())
        return await create_kernels_on_agent(
            pool,
            secrets,
            batch.agent_id,
            batch.items,
            recorder,
            start_timeout=timeout,
            environs=environs if sessions else None,
        )

    fanout = InProcessFanOut(execute)
    cls = SessionLauncher if real_keys else QuickKeysLauncher
    launcher = cls(
        pool,
        fanout,
        recorder,
        secrets,
        plugins if plugins is not None else {"local": LocalBridgeNetworkPlugin()},
        "local",
        timeout,
    )
    return Kit(launcher, pool, fanout, recorder, secrets)


def make_session(
    agents: tuple[str, ...],
    *,
    image: str = "image1",
    mode: ClusterMode = ClusterMode.SINGLE_NODE,
) -> SessionInfo:
    sid = SessionId(uuid.uuid4())
    kernels = tuple(
        KernelInfo(
            id=KernelId(uuid.uuid4()),
            session_id=sid,
            agent_id=AgentId(agent),
            image=image,
            cluster_role="main" if i == 0 else "sub",
            cluster_idx=1 if i == 0 else i,
            cluster_hostname="main1" if i == 0 else f"sub{i}",
            agent_addr=f"tcp://{agent}.local:6001",
        )
        for i, agent in enumerate(agents)
    )
    return SessionInfo(id=sid, kernels=kernels, name="s", cluster_mode=mode)


def create_call(kit: Kit, agent: str) -> tuple[Any, ...]:
    [call] = kit.pool.clients[AgentId(agent)].calls_to("create_kernels")
    return call.args


async def test_sc_la_005_single_kernel_session_is_created() -> None:
    """SC-LA-005: one kernel on a1 -> one create_kernels with its config; network id stored."""
    kit = make_kit()
    session = make_session(("a1",))

    await kit.launcher.start_sessions_for_handler([session], IMAGES, run_id=RunId(3))

    session_id, kernel_ids, configs, cluster_info, image_refs = create_call(kit, "a1")
    kernel = session.kernels[0]
    assert (session_id, kernel_ids) == (session.id, [kernel.id])
    [config] = configs
    assert config["kernel_id"] == str(kernel.id) and config["session_id"] == str(session.id)
    assert config["image"]["canonical"] == "image1"
    assert image_refs == {kernel.id: IMAGES["image1"]}
    assert cluster_info["size"] == 1
    # One kernel needs no network of its own: Backend.AI stores None for it.
    assert kit.recorder.network_id_calls == [(session.id, None)]
    [record] = kit.fanout.records
    assert (record.run_id, record.operation) == (RunId(3), Operation.CREATE_KERNELS)
    [outcome] = record.outcomes
    assert outcome.ok and outcome.item_id == str(kernel.id) and outcome.agent_id == "a1"
    assert outcome.detail["creation_info"]["container_id"] == f"c-{kernel.id}"
    assert kit.recorder.error_infos == {}


async def test_sc_la_006_multi_node_cluster_creates_on_each_agent() -> None:
    """SC-LA-006: 3 kernels on 3 agents -> 3 create_kernels sharing one cluster info."""
    session = make_session(("a1", "a2", "a3"), mode=ClusterMode.MULTI_NODE)
    kit = make_kit(("a1", "a2", "a3"), real_keys=True, sessions=(session,))

    await kit.launcher.start_sessions_for_handler([session], IMAGES)

    private, public = kit.secrets.keypairs[session.id]
    for agent, kernel in zip(("a1", "a2", "a3"), session.kernels, strict=True):
        _, kernel_ids, configs, cluster_info, _ = create_call(kit, agent)
        assert kernel_ids == [kernel.id]
        assert cluster_info["size"] == 3 and cluster_info["mode"] == "multi-node"
        assert cluster_info["ssh_keypair"] == {"private_key": private, "public_key": public}
        environ = configs[0]["environ"]
        assert environ["BACKENDAI_CLUSTER_SIZE"] == "3"
        assert environ["BACKENDAI_CLUSTER_HOSTS"] == "main1,sub1,sub2"
        assert environ["BACKENDAI_CLUSTER_HOST"] == kernel.cluster_hostname
    assert len(kit.fanout.records[0].batches) == 3
    assert kit.recorder.network_ids[session.id] == f"bai-local-{session.id}"


async def test_sc_la_007_session_without_kernels_raises_and_is_recorded() -> None:
    """SC-LA-007: no kernels -> ValueError from the start; the handler stores the error info."""
    kit = make_kit()
    empty = SessionInfo(id=SessionId(uuid.uuid4()), kernels=())

    with pytest.raises(ValueError, match="no kernels"):
        await kit.launcher._start_single_session(empty, IMAGES)
    await kit.launcher.start_sessions_for_handler([empty], IMAGES)

    [info] = kit.recorder.error_infos[empty.id]
    assert info["name"] == "EmptySession" and "no kernels" in info["message"]
    assert kit.fanout.records == [] and kit.pool.acquired == []


async def test_sc_la_008_slow_session_times_out_while_others_complete(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SC-LA-008: session 2's agent never answers -> it times out; session 1 is created.

    Given a start timeout of 2 s and a create_kernels on a2 that waits forever,
    when both sessions start together, then session 1's kernel is created, session 2
    gets a timeout error info and a warning naming it, and neither session is failed
    by the other.
    """
    kit = make_kit(("a1", "a2"), timeout=2.0)
    never = asyncio.Event()

    async def hang(*_: object) -> list[dict[str, Any]]:
        await never.wait()
        return []

    kit.pool.clients[AgentId("a2")].script("create_kernels", hang)
    fast, slow = make_session(("a1",)), make_session(("a2",))

    with caplog.at_level(logging.WARNING):
        await kit.launcher.start_sessions_for_handler([fast, slow], IMAGES)

    [record] = kit.fanout.records
    assert [(o.agent_id, o.ok) for o in record.outcomes] == [("a1", True), ("a2", False)]
    assert fast.id not in kit.recorder.error_infos
    assert len(kit.pool.clients[AgentId("a2")].calls_to("create_kernels")) == 1
    [info] = kit.recorder.error_infos[slow.id]
    assert info["name"] == "TimeoutError"
    timeouts = [r for r in caplog.records if "timed out" in r.getMessage()]
    assert [r.levelno for r in timeouts] == [logging.WARNING]
    assert str(slow.id) in timeouts[0].getMessage()


async def test_sc_la_017_agent_error_on_create_records_error_info() -> None:
    """SC-LA-017: create_kernels raises AgentError -> error info stored, session not terminated."""
    kit = make_kit()
    kit.pool.clients[AgentId("a1")].script(
        "create_kernels", AgentError("Container creation failed")
    )
    session = make_session(("a1",))

    await kit.launcher._start_single_session(session, IMAGES)

    [info] = kit.recorder.error_infos[session.id]
    assert info["name"] == "AgentError" and info["src"] == "agent"
    assert info["message"] == "Container creation failed"
    assert "Container creation failed" in info["repr"]
    [outcome] = kit.fanout.records[0].outcomes
    assert not outcome.ok and outcome.detail["error_info"] == info
    assert kit.pool.clients[AgentId("a1")].calls_to("destroy_kernel") == []


async def test_sc_la_017_agent_error_during_network_setup_is_recorded() -> None:
    """SC-LA-017: an agent error while making the session network is stored, nothing created."""
    kit = make_kit()
    kit.pool.clients[AgentId("a1")].script("create_local_network", AgentError("bridge exists"))
    session = make_session(("a1", "a1"))

    await kit.launcher.start_sessions_for_handler([session], IMAGES)

    [info] = kit.recorder.error_infos[session.id]
    assert info["name"] == "AgentError" and info["message"] == "bridge exists"
    assert kit.fanout.records == []
    assert kit.pool.clients[AgentId("a1")].calls_to("create_kernels") == []


async def test_sc_la_018_missing_image_config_raises_value_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SC-LA-018: no config for the kernel's image -> ValueError, logged, nothing created."""
    kit = make_kit()
    session = make_session(("a1", "a1"), image="unresolved:1")

    with caplog.at_level(logging.ERROR), pytest.raises(ValueError, match="unresolved:1"):
        await kit.launcher._start_single_session(session, {})
    assert isinstance(UnknownImage("x"), ValueError)
    assert any(
        r.levelno == logging.ERROR and "unresolved:1" in r.getMessage() for r in caplog.records
    )
    await kit.launcher.start_sessions_for_handler([session], {})

    [info] = kit.recorder.error_infos[session.id]
    assert info["name"] == "UnknownImage"
    # The image is checked before any network is made for the session.
    assert kit.pool.clients[AgentId("a1")].calls == []
    assert kit.fanout.records == []


async def test_ssh_private_key_never_travels_in_fanout_messages(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The private key stays out of every batch, outcome and log; the agent still receives it."""
    kit = make_kit(("a1", "a2"), real_keys=True)
    session = make_session(("a1", "a2", "a2"), mode=ClusterMode.MULTI_NODE)

    with caplog.at_level(logging.DEBUG):
        await kit.launcher.start_sessions_for_handler([session], IMAGES)

    private, public = kit.secrets.keypairs[session.id]
    assert "PRIVATE KEY" in private
    for record in kit.fanout.records:
        messages = [json.dumps(list(b.items)) for b in record.batches]
        messages += [json.dumps(o.to_json()) for o in record.outcomes]
        assert messages and all(private not in m for m in messages)
        assert all(public not in m for m in messages[: len(record.batches)])
    assert all(private not in r.getMessage() for r in caplog.records)
    for agent in ("a1", "a2"):
        _, _, _, cluster_info, _ = create_call(kit, agent)
        assert cluster_info["ssh_keypair"]["private_key"] == private
    assert kit.secrets.reads == [session.id, session.id]


async def test_create_fails_per_kernel_when_the_keypair_is_gone() -> None:
    """A worker that cannot read the session's keypair fails its kernels without an agent call."""
    kit = make_kit(("a1", "a2"))
    session = make_session(("a1", "a2"), mode=ClusterMode.MULTI_NODE)
    await kit.launcher.start_sessions_for_handler([session], IMAGES)
    batch = next(b for b in kit.fanout.records[0].batches if b.agent_id == "a1")
    kit.secrets.keypairs.clear()

    outcomes = await create_kernels_on_agent(kit.pool, kit.secrets, AgentId("a1"), batch.items)

    assert [(o.item_id, o.ok) for o in outcomes] == [(str(session.kernels[0].id), False)]
    assert "NotFound" in (outcomes[0].error or "")
    assert len(kit.pool.clients[AgentId("a1")].calls_to("create_kernels")) == 1
