"""Agent liveness end to end: real worker, real reference agents, real RPC (SC-FA-004..006)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sokovan.types import RunId, SessionStatus
from tasks.cli import app as cli_app
from tests.agents import RpcClient, set_fault
from tests.cluster import IMAGE, Cluster, kernel_rows, running_cluster
from tests.conftest import free_port
from tests.workers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CHECK = "check_agents"
# Short thresholds so the states follow each other within seconds.
FAST = {
    "agent_ping_timeout": "1",
    "agent_unreachable_after": "1",
    "agent_lost_after": "3",
    "agent_recovery": "1",
}


def check(c: Cluster) -> dict[str, Any]:
    answer: dict[str, Any] = c.send("sokovan.handler.run", handler=CHECK, trigger="manual")
    return answer


def cli(c: Cluster, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    for key, value in c.senv.env.items():
        if key.startswith("SOKOVAN_"):
            monkeypatch.setenv(key, value)
    return CliRunner().invoke(cli_app, list(args))


def agent_status(c: Cluster, agent_id: str) -> str:
    return c.repo.get_agent(agent_id).status


def checked_until(c: Cluster, predicate: Any, what: str, timeout: float = 60) -> None:
    """Runs the liveness check until `predicate()` holds."""
    wait_for(lambda: bool(check(c)) and predicate(), timeout=timeout, interval=0.5, what=what)


async def test_sc_fa_004_agent_at_a_dead_address_turns_lost_and_gets_no_session(
    tmp_path: Path, valkey_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SC-FA-004: an agent registered by hand where nothing listens.

    Given `sokovan agents register dead1` at a free port (and far more room than a1),
    When the liveness check runs, dead1 turns UNREACHABLE, then LOST by the thresholds,
    Then sessions never land on it (a named one is refused), a1 stays ALIVE, and
    `agents remove dead1` takes it out of the table.
    """
    # A LOST threshold well past UNREACHABLE's, so a check lands in between.
    settings = {**FAST, "agent_lost_after": "6"}
    async with running_cluster(
        tmp_path, valkey_url, agents=1, runtime="sim", settings=settings
    ) as c:
        addr = f"tcp://127.0.0.1:{free_port()}"
        result = cli(
            c, monkeypatch, "agents", "register", "dead1", "--rpc-addr", addr, "--cpu", "64"
        )
        assert result.exit_code == 0, result.output
        seen: set[str] = set()

        def lost() -> bool:
            seen.add(agent_status(c, "dead1"))
            return "LOST" in seen

        checked_until(c, lost, "dead1 to turn LOST")

        assert seen >= {"UNREACHABLE", "LOST"}, seen
        assert agent_status(c, "a1") == "ALIVE"
        refused = c.send("sokovan.session.create", request={"image": IMAGE, "agents": ["dead1"]})
        assert "error" in refused and "LOST" in refused["error"], refused
        sids = [c.create() for _ in range(3)]
        for sid in sids:
            session = c.wait_status(sid, SessionStatus.RUNNING)
            assert {str(k.agent_id) for k in session.kernels} == {"a1"}
        listed = cli(c, monkeypatch, "agents", "list")
        assert "dead1" in listed.output and "LOST" in listed.output
        assert cli(c, monkeypatch, "agents", "remove", "dead1").exit_code == 0
        refused_remove = cli(c, monkeypatch, "agents", "remove", "a1")
        assert refused_remove.exit_code == 1 and "live kernel" in refused_remove.output
        assert {a.id for a in c.repo.list_agents()} == {"a1"}


async def test_sc_fa_005_sc_fa_006_lost_agent_kernels_end_then_leftovers_destroyed(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-FA-005 and SC-FA-006 with a reference agent that goes silent, then comes back.

    Given a RUNNING session on a1, and a1 silent (it answers nothing, its kernel still there),
    When the liveness check runs past the thresholds and the grace,
    Then a1 is LOST, its kernel TERMINATED with AGENT_LOST (evidence: a1's last contact), the
    session TERMINATED and a1's slots free;
    When a1 speaks again, the next check finds it ALIVE and destroys the leftover container,
    recorded in that run; the agent no longer has the kernel.
    """
    settings = {**FAST, "agent_lost_grace": "1"}
    async with running_cluster(
        tmp_path, valkey_url, agents=1, runtime="sim", settings=settings
    ) as c:
        sid = c.create(agents=["a1"])
        kid = str(c.wait_status(sid, SessionStatus.RUNNING).kernels[0].id)
        url = c.senv.settings.redis_url
        await set_fault(url, "a1", {"op": "silent"})

        checked_until(c, lambda: kernel_rows(c.senv, [kid])[kid][0] == "TERMINATED", "AGENT_LOST")

        assert kernel_rows(c.senv, [kid])[kid] == ("TERMINATED", "AGENT_LOST")
        assert agent_status(c, "a1") == "LOST"
        assert c.wait_status(sid, SessionStatus.TERMINATED).status_info == "AGENT_LOST"
        assert "a1" not in c.repo.occupied_by_agent()
        lost = items_of(c, "terminate_sessions", kid)
        assert [i.evidence["verdict"] for i in lost] == ["agent_lost"]
        assert lost[0].evidence["agent_last_contact"]

        await set_fault(url, "a1", {"op": "clear"})
        checked_until(c, lambda: leftover_closed(c, kid), "the leftover to be destroyed")

        assert agent_status(c, "a1") == "ALIVE"
        assert any(i.ok for i in items_of(c, "reconcile_leftovers", kid))
        async with RpcClient(c.agents.addr("a1"), "a1") as rpc:
            status = await rpc.call("sokovan_control", {"op": "status"})
        assert kid not in status["kernels"]


def items_of(c: Cluster, handler: str, item_id: str) -> list[Any]:
    runs = c.ledger.list_runs(handler)
    return [i for r in runs for i in c.ledger.items(RunId(r.id)) if i.item_id == item_id]


def leftover_closed(c: Cluster, kid: str) -> bool:
    return any(str(x.kernel_id) == kid and x.destroyed_at for x in c.repo.leftovers())
