"""A demo cluster authenticated end to end: CURVE between the workers and the reference agents."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq.auth
from callosum.exceptions import AuthenticationError

from sokovan.agent.curve import ManagerAuthenticator
from sokovan.agent.pool import curve_keys_for
from sokovan.config import load_settings
from sokovan.types import AgentAddress, AgentId, KernelStatus, SessionStatus
from tests.agents import CurveClientAuth, RpcClient
from tests.cluster import kernel_processes, running_cluster
from tests.services import run_cli
from tests.workers import make_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def test_settings_alone_turn_curve_on_for_agents_and_workers(
    tmp_path: Path, valkey_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sokovan certs curve` and its three settings: agents and workers authenticate.

    Given certificates made by the CLI and only the printed settings (agents started as
    the Procfile starts them, without CURVE options), a 2-kernel multi-node session runs
    and terminates; a client without CURVE, or with a key the agents do not know, is refused."""
    senv = make_env(tmp_path / "certs", valkey_url)
    out = run_cli(senv, "certs", "curve", "--dir", str(tmp_path / "curve"), "--agents", "a1,a2")
    printed = dict(line.split("=", 1) for line in out.splitlines() if line.startswith("SOKOVAN_"))
    assert set(printed) == {
        "SOKOVAN_CURVE_MANAGER_CERT",
        "SOKOVAN_CURVE_AGENT_PUBLIC_KEY",
        "SOKOVAN_CURVE_AGENT_CERT",
    }
    assert all(p.stat().st_mode & 0o077 == 0 for p in (tmp_path / "curve").rglob("*.key_secret"))
    for name, value in printed.items():
        monkeypatch.setenv(name, value)  # the agent processes read their settings from here
    settings = {k.removeprefix("SOKOVAN_").lower(): v for k, v in printed.items()}
    manager = load_settings(dict(printed), dotenv=None)

    def manager_auth(agent_id: str) -> ManagerAuthenticator:
        """What the workers present to each agent, for the test's own readiness pings."""
        keys = curve_keys_for(manager, AgentAddress(AgentId(agent_id), "tcp://unused"))
        assert keys is not None
        return ManagerAuthenticator(keys)

    async with running_cluster(
        tmp_path, valkey_url, settings=settings, client_auth_for=manager_auth
    ) as c:
        assert c.agents.client_auth is None  # no CURVE option was passed to the agents
        sid = c.create(kernels=2, cluster_mode="multi-node", agents=["a1", "a2"])
        s = c.wait_status(sid, SessionStatus.RUNNING)
        assert all(kernel_processes(str(k.id)) for k in s.kernels)
        with pytest.raises(AuthenticationError):
            async with RpcClient(c.agents.addr("a1"), "a1", timeout=3) as plain:
                await plain.call("ping", "open?")
        await _refused_with_a_stranger_key(c.agents.addr("a1"), tmp_path, printed)
        assert c.send("sokovan.session.terminate", session_id=str(sid))["terminating"]
        s = c.wait_status(sid, SessionStatus.TERMINATED)
        assert all(k.status == KernelStatus.TERMINATED for k in s.kernels)
        assert "CURVE client refused" in c.agents.log_path.read_text(errors="replace")


async def _refused_with_a_stranger_key(addr: str, tmp_path: Path, printed: dict[str, str]) -> None:
    """A CURVE client whose key the agents were not given gets no answer."""
    _, secret = zmq.auth.create_certificates(str(tmp_path), "stranger")
    agent_public, _ = zmq.auth.load_certificate(
        str(Path(printed["SOKOVAN_CURVE_AGENT_PUBLIC_KEY"]) / "a1.key")
    )
    own_public, own_secret = zmq.auth.load_certificate(secret)
    assert own_secret is not None
    auth = CurveClientAuth(agent_public, own_public, own_secret)
    with pytest.raises((AuthenticationError, TimeoutError)):
        async with RpcClient(addr, "a1", timeout=3, authenticator=auth) as stranger:
            await stranger.call("ping", "let me in")
