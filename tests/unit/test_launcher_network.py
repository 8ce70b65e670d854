"""Session networks and network plugins (SC-LA-009..013)."""

from __future__ import annotations

import uuid
from importlib.metadata import EntryPoint

import pytest

from sokovan.errors import NetworkPluginError
from sokovan.ports import NetworkPlugin
from sokovan.scheduler.launcher import (
    LocalBridgeNetworkPlugin,
    SessionLauncher,
    load_network_plugins,
)
from sokovan.stubs.agents import FakeAgentClientPool
from sokovan.stubs.fanout import InProcessFanOut
from sokovan.stubs.network import FakeNetworkPlugin
from sokovan.stubs.recorder import FakeSessionRecorder
from sokovan.stubs.secrets import FakeSecretStore
from sokovan.types import (
    AgentId,
    ClusterMode,
    ImageConfig,
    ItemOutcome,
    KernelId,
    KernelInfo,
    NetworkType,
    SessionId,
    SessionInfo,
)

IMAGES = {"image1": ImageConfig(canonical="image1")}


async def never_dispatched(*_: object) -> list[ItemOutcome]:
    raise AssertionError("network tests dispatch nothing")


def make_launcher(
    pool: FakeAgentClientPool,
    plugins: dict[str, NetworkPlugin],
    driver: str = "local",
) -> tuple[SessionLauncher, FakeSessionRecorder]:
    recorder = FakeSessionRecorder()
    launcher = SessionLauncher(
        pool, InProcessFanOut(never_dispatched), recorder, FakeSecretStore(), plugins, driver
    )
    return launcher, recorder


def make_session(
    agents: tuple[str, ...],
    *,
    network_type: NetworkType = NetworkType.VOLATILE,
    mode: ClusterMode = ClusterMode.SINGLE_NODE,
    network_id: str | None = None,
) -> SessionInfo:
    sid = SessionId(uuid.uuid4())
    kernels = tuple(
        KernelInfo(
            id=KernelId(uuid.uuid4()),
            session_id=sid,
            agent_id=AgentId(agent),
            image="image1",
            cluster_role="main" if i == 0 else "sub",
            cluster_idx=1 if i == 0 else i,
            cluster_hostname="main1" if i == 0 else f"sub{i}",
            agent_addr=f"tcp://10.0.0.{i + 1}:6001",
        )
        for i, agent in enumerate(agents)
    )
    return SessionInfo(
        id=sid,
        kernels=kernels,
        cluster_mode=mode,
        network_type=network_type,
        network_id=network_id,
    )


def all_calls(pool: FakeAgentClientPool, method: str) -> list[object]:
    return [c for client in pool.clients.values() for c in client.calls_to(method)]


async def test_sc_la_009_volatile_single_node_multi_kernel_gets_local_bridge() -> None:
    """SC-LA-009: 3 kernels on one node -> create_local_network("bai-singlenode-{id}")."""
    pool = FakeAgentClientPool()
    a1 = pool.add("a1")
    plugin = FakeNetworkPlugin()
    launcher, recorder = make_launcher(pool, {"local": plugin})
    session = make_session(("a1", "a1", "a1"))

    setup = await launcher._setup_network_configuration(session)

    [call] = a1.calls_to("create_local_network")
    assert call.args == (f"bai-singlenode-{session.id}",)
    assert setup.network_config["mode"] == "bridge"
    assert setup.network_config["network_name"].startswith("bai-singlenode-")
    assert setup.network_name == call.args[0]
    assert recorder.network_ids[session.id] == call.args[0]
    assert plugin.created == []


async def test_volatile_single_kernel_creates_no_network() -> None:
    """A single-kernel volatile session joins no network of its own (as in Backend.AI)."""
    pool = FakeAgentClientPool()
    pool.add("a1")
    plugin = FakeNetworkPlugin()
    launcher, recorder = make_launcher(pool, {"local": plugin})
    session = make_session(("a1",))

    setup = await launcher._setup_network_configuration(session)

    assert (setup.network_name, dict(setup.network_config)) == (None, {})
    assert pool.acquired == [] and plugin.created == []
    assert recorder.network_id_calls == [(session.id, None)]


async def test_sc_la_010_volatile_multi_node_uses_the_default_driver_plugin() -> None:
    """SC-LA-010: multi-node -> plugins[default_driver].create_network(session id) is used."""
    pool = FakeAgentClientPool()
    for agent in ("a1", "a2"):
        pool.add(agent)
    overlay = FakeNetworkPlugin(prefix="overlay", options={"mode": "overlay"})
    launcher, recorder = make_launcher(
        pool, {"local": FakeNetworkPlugin(), "overlay": overlay}, driver="overlay"
    )
    session = make_session(("a1", "a2"), mode=ClusterMode.MULTI_NODE)

    setup = await launcher._setup_network_configuration(session)

    assert overlay.created == [str(session.id)]
    assert setup.network_name == f"overlay-{session.id}"
    assert setup.network_config == {"mode": "overlay", "network_name": f"overlay-{session.id}"}
    assert recorder.network_ids[session.id] == f"overlay-{session.id}"
    assert all_calls(pool, "create_local_network") == []


async def test_sc_la_011_host_network_maps_each_kernels_ssh_port() -> None:
    """SC-LA-011: HOST with 3 kernels -> mode host, assign_port per kernel, port mapping."""
    pool = FakeAgentClientPool()
    for agent in ("a1", "a2", "a3"):
        pool.add(agent).script("assign_port", 12345)
    launcher, recorder = make_launcher(pool, {})
    session = make_session(("a1", "a2", "a3"), network_type=NetworkType.HOST)

    setup = await launcher._setup_network_configuration(session)

    assert setup.network_config["mode"] == "host"
    assert setup.cluster_ssh_port_mapping == {
        "main1": ("10.0.0.1", 12345),
        "sub1": ("10.0.0.2", 12345),
        "sub2": ("10.0.0.3", 12345),
    }
    assert [len(c.calls_to("assign_port")) for c in pool.clients.values()] == [1, 1, 1]
    assert recorder.network_ids[session.id] == "host"


async def test_sc_la_012_persistent_network_is_looked_up_not_created() -> None:
    """SC-LA-012: PERSISTENT with network id n1 -> "persistent-n1", no creation call."""
    pool = FakeAgentClientPool()
    pool.add("a1")
    plugin = FakeNetworkPlugin()
    launcher, recorder = make_launcher(pool, {"local": plugin})
    session = make_session(("a1", "a1"), network_type=NetworkType.PERSISTENT, network_id="n1")

    setup = await launcher._setup_network_configuration(session)

    assert setup.network_name == "persistent-n1"
    assert setup.network_config == {"mode": "bridge", "network_name": "persistent-n1"}
    assert pool.acquired == [] and plugin.created == []
    # The stored id already names the network: it is kept for the next start attempt.
    assert recorder.network_id_calls == []


@pytest.mark.parametrize("installed", [{}, {"local": LocalBridgeNetworkPlugin()}])
async def test_sc_la_013_missing_plugin_raises_key_error_listing_plugins(
    installed: dict[str, NetworkPlugin],
) -> None:
    """SC-LA-013: default driver "weave" without a plugin -> KeyError naming what exists."""
    pool = FakeAgentClientPool()
    pool.add("a1")
    launcher, recorder = make_launcher(pool, installed, driver="weave")
    session = make_session(("a1", "a1"), mode=ClusterMode.MULTI_NODE)

    with pytest.raises(KeyError) as caught:
        await launcher._setup_network_configuration(session)

    assert isinstance(caught.value, NetworkPluginError)
    message = str(caught.value)
    assert "'weave' not found" in message
    assert f"Available plugins: {sorted(installed)}" in message
    assert recorder.network_id_calls == []
    await launcher.start_sessions_for_handler([session], IMAGES)
    [info] = recorder.error_infos[session.id]
    assert info["name"] == "UnknownNetworkDriver" and "weave" in info["message"]


async def test_local_bridge_plugin_creates_unique_networks_and_forgets_them() -> None:
    """The built-in driver gives each identifier its own id, reuses it, and destroys it."""
    plugin = LocalBridgeNetworkPlugin()

    first = await plugin.create_network("s1")
    again = await plugin.create_network("s1")
    other = await plugin.create_network("s2")

    assert first == again and first["network_id"] != other["network_id"]
    assert first["options"]["mode"] == "bridge"
    assert first["options"]["network_name"] == first["network_id"]
    await plugin.destroy_network(str(first["network_id"]))
    await plugin.destroy_network("never-made")
    assert plugin.networks == [other["network_id"]]


class PluginForTests(FakeNetworkPlugin):
    def __init__(self) -> None:
        super().__init__(prefix="ep")


def test_load_network_plugins_finds_entry_points_and_keeps_the_builtin() -> None:
    """Plugins registered under sokovan.network_plugins load beside the built-in "local"."""
    group = "sokovan.network_plugins"
    points = [
        EntryPoint("overlay", f"{__name__}:PluginForTests", group),
        EntryPoint("broken", f"{__name__}:NoSuchClass", group),
    ]

    plugins = load_network_plugins(points)

    assert sorted(plugins) == ["local", "overlay"]
    assert isinstance(plugins["local"], LocalBridgeNetworkPlugin)
    assert isinstance(plugins["overlay"], PluginForTests)
    assert "local" in load_network_plugins()
