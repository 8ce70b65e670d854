"""The sweep after agents restart: real worker (and beat), reference agents with process kernels.

SC-CV-004 (an agent restarted with its id speaks for its node), SC-CV-005 (what cannot be
verified is `partial`, then ends on the agent-liveness path) and SC-CV-010 (every agent
restarted at once: reaped at a bounded rate, not held for good).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sokovan.scheduler.sweep_brake import RatioBrake
from sokovan.types import RunId, RunStatus, SessionId, SessionStatus
from tests.agents import AgentProcess, agent_process, set_fault
from tests.cluster import Cluster, kernel_processes, kernel_rows, rpc_ports, running_cluster
from tests.e2e.test_sweep import PRESENCE_INTERVAL, STALE_AFTER, running_sessions, sweep, wait_stale
from tests.workers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SWEEP = "sweep_stale_kernels"
CHECK = "check_agents"


async def kill_agents(c: Cluster) -> dict[str, int]:
    """SIGKILLs the agent daemon (its process kernels die with it); returns each agent's port."""
    ports = rpc_ports(c.agents)
    c.agents.proc.kill()
    await c.agents.wait()
    return ports


@asynccontextmanager
async def restarted(c: Cluster, ports: dict[str, int]) -> AsyncIterator[list[AgentProcess]]:
    """Each agent started again with its id on its port (a new instance, no kernels)."""
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                agent_process(
                    c.senv.settings.redis_url,
                    agent_id=agent_id,
                    runtime="process",
                    presence_interval=PRESENCE_INTERVAL,
                    extra_args=["--port", str(port)],
                )
            )
            for agent_id, port in ports.items()
        ]


def kernel_of(c: Cluster, sid: SessionId) -> str:
    return str(c.session(sid).kernels[0].id)


def sweep_runs(c: Cluster) -> list[Any]:
    return [r for r in c.ledger.list_runs(SWEEP) if r.status != RunStatus.RUNNING]


def evidence_of(c: Cluster, kid: str) -> list[dict[str, Any]]:
    """Every sweep evidence recorded for one kernel, oldest run first."""
    runs = sorted(sweep_runs(c), key=lambda r: r.id)
    return [i.evidence for r in runs for i in c.ledger.items(RunId(r.id)) if i.item_id == kid]


async def test_sc_cv_004_agent_restarted_with_its_id_reaps_the_dead_keeps_the_running(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-CV-004 with beat: an agent SIGKILLed and started again with its id and port.

    Given three RUNNING sessions on a1 (process kernels) and beat sweeping every 2 s,
    When a1's daemon is SIGKILLed (its kernels die with it) and a1 starts again on its port,
    and a new session on it stops writing presence while it runs,
    Then the next sweeps reap the three old kernels on the restarted a1's "not running"
    (STALE_KERNEL, no "identity" in any evidence) and their sessions end TERMINATED, while
    the new kernel, stale but reported running by a1, stays RUNNING with its process.
    """
    settings = {"presence_stale_after": str(STALE_AFTER), "sweep_interval": "2"}
    async with running_cluster(
        tmp_path,
        valkey_url,
        agents=1,
        settings=settings,
        presence_interval=PRESENCE_INTERVAL,
        beat=True,
    ) as c:
        old = running_sessions(c, *({"name": f"old{i}", "agents": ["a1"]} for i in range(3)))
        old_kernels = [kernel_of(c, s) for s in old]
        ports = await kill_agents(c)
        wait_for(
            lambda: all(kernel_processes(k) == [] for k in old_kernels),
            timeout=30,
            what="the old kernels' processes to die with their agent",
        )

        async with restarted(c, ports):
            (kept_sid,) = running_sessions(c, {"name": "kept", "agents": ["a1"]})
            kept = kernel_of(c, kept_sid)
            await set_fault(c.senv.settings.redis_url, "a1", {"op": "stop_presence"})
            for sid in old:
                c.wait_status(sid, SessionStatus.TERMINATED, timeout=90)
            wait_stale(c, [kept])
            wait_for(
                lambda: any(e.get("verdict") == "alive" for e in evidence_of(c, kept)),
                timeout=60,
                what="a sweep to ask a1 about the stale but running kernel",
            )

            rows = kernel_rows(c.senv, [*old_kernels, kept])
            assert all(rows[k] == ("TERMINATED", "STALE_KERNEL") for k in old_kernels), rows
            assert rows[kept][0] == "RUNNING" and len(kernel_processes(kept)) == 1
            assert c.session(kept_sid).status == SessionStatus.RUNNING
            for k in old_kernels:
                seen = evidence_of(c, k)
                assert seen and seen[-1]["check_running"] == "False", seen
                assert all("identity" not in e for e in seen), seen


async def test_sc_cv_005_unverifiable_is_partial_then_takes_the_lost_path(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-CV-005: a kernel whose agent cannot be asked is skipped visibly, and not forever.

    Given RUNNING sessions on a1 and on a2, both agents in one daemon,
    When the daemon is SIGKILLed and only a1 starts again (a2's address is dead),
    Then a sweep reaps a1's old kernel, skips a2's as unverified, and ends `partial` with
    "1 kernel(s) unverified" in its note, not `succeeded`;
    When the liveness check runs past its thresholds (this path existed before: an agent
    that does not answer turns UNREACHABLE, then LOST, and its kernels end AGENT_LOST after the
    grace), Then a2's kernel is TERMINATED with AGENT_LOST, its session TERMINATED, and the
    next sweep, with nothing left unverified, succeeds.
    """
    settings = {
        "presence_stale_after": str(STALE_AFTER),
        "agent_ping_timeout": "1",
        "agent_unreachable_after": "1",
        "agent_lost_after": "3",
        "agent_lost_grace": "1",
    }
    async with running_cluster(
        tmp_path, valkey_url, settings=settings, presence_interval=PRESENCE_INTERVAL
    ) as c:
        s1, s2 = running_sessions(
            c, {"name": "on1", "agents": ["a1"]}, {"name": "on2", "agents": ["a2"]}
        )
        k1, k2 = kernel_of(c, s1), kernel_of(c, s2)
        ports = await kill_agents(c)
        async with restarted(c, {"a1": ports["a1"]}):
            wait_stale(c, [k1, k2])

            answer = sweep(c)

            assert answer["status"] == RunStatus.PARTIAL, answer
            assert "1 stale kernel(s) terminated" in answer["note"]
            assert "1 kernel(s) unverified" in answer["note"]
            items = {i.item_id: i for i in c.ledger.items(RunId(answer["run_id"]))}
            assert items[k2].skipped and items[k2].evidence["verdict"] == "unverified"
            assert (items[k2].error or "").startswith("unverified: error"), items[k2]
            rows = kernel_rows(c.senv, [k1, k2])
            assert rows[k1] == ("TERMINATED", "STALE_KERNEL") and rows[k2][0] == "RUNNING", rows

            wait_for(
                lambda: (
                    bool(c.send("sokovan.handler.run", handler=CHECK, trigger="manual"))
                    and kernel_rows(c.senv, [k2])[k2][0] == "TERMINATED"
                ),
                timeout=60,
                interval=0.5,
                what="a2's kernel to take the LOST path",
            )

            assert kernel_rows(c.senv, [k2])[k2] == ("TERMINATED", "AGENT_LOST")
            assert c.repo.get_agent("a2").status == "LOST"
            assert c.wait_status(s2, SessionStatus.TERMINATED).status_info == "AGENT_LOST"
            assert c.repo.get_agent("a1").status == "ALIVE"
            after = c.send("sokovan.handler.run", handler=SWEEP, trigger="manual")
            assert after["status"] == RunStatus.SUCCEEDED, after


async def test_sc_cv_010_every_agent_restarted_at_once_is_reaped_at_a_bounded_rate(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-CV-010: a whole-cluster restart clears in a few sweeps, a bounded share each.

    Given eight RUNNING sessions on a1 and a2 (process kernels), a brake from 4 kernels at
    ratio 0.5 reaping at most a quarter of the group per run,
    When the agent daemon is SIGKILLed, Then a sweep while no agent can be asked is `held`
    ("no agent could be asked") and kills nothing;
    When a1 and a2 start again with their ids and ports, one new session runs on each (one
    of them stale but running),
    Then each sweep reaps no more than its share of the kernels RUNNING then (`partial` while
    it leaves confirmed dead ones to the next runs), all eight old kernels are TERMINATED
    within eight sweeps, and neither new kernel is touched.
    """
    brake = RatioBrake(0.5, 4, 0.25)
    settings = {
        "presence_stale_after": str(STALE_AFTER),
        "sweep_brake_min_kernels": str(brake.min_kernels),
        "sweep_brake_reap_share": str(brake.reap_share),
    }
    async with running_cluster(
        tmp_path, valkey_url, settings=settings, presence_interval=PRESENCE_INTERVAL
    ) as c:
        old = running_sessions(
            c, *({"name": f"o{i}", "agents": [f"a{i % 2 + 1}"]} for i in range(8))
        )
        old_kernels = [kernel_of(c, s) for s in old]
        ports = await kill_agents(c)
        wait_stale(c, old_kernels)

        held = sweep(c)

        assert held["status"] == RunStatus.HELD, held
        assert "no agent could be asked" in held["note"]
        assert {r[0] for r in kernel_rows(c.senv, old_kernels).values()} == {"RUNNING"}

        async with restarted(c, ports):
            new = running_sessions(
                c, {"name": "n1", "agents": ["a1"]}, {"name": "n2", "agents": ["a2"]}
            )
            new_kernels = [kernel_of(c, s) for s in new]
            await set_fault(
                c.senv.settings.redis_url, "a1", {"op": "stop_presence", "kernels": new_kernels[:1]}
            )
            wait_stale(c, new_kernels[:1])
            runs = 0
            while any(s == "RUNNING" for s, _ in kernel_rows(c.senv, old_kernels).values()):
                before = kernel_rows(c.senv, [*old_kernels, *new_kernels])
                running = sum(1 for s, _ in before.values() if s == "RUNNING")
                answer = sweep(c)
                runs += 1
                assert runs <= 8, answer
                after = kernel_rows(c.senv, old_kernels)
                reaped = sum(
                    1 for k in old_kernels if before[k][0] == "RUNNING" and after[k][0] != "RUNNING"
                )
                if "brake" in (answer["note"] or ""):
                    assert reaped <= brake.allowance(running), (answer, running)
                    assert answer["status"] in (RunStatus.PARTIAL, RunStatus.SUCCEEDED), answer
                    assert reaped >= 1, answer
                if runs == 1:
                    assert reaped == brake.allowance(running) == 2, answer
                    assert answer["status"] == RunStatus.PARTIAL
                    assert "left for the next runs" in answer["note"]

            assert runs >= 3
            rows = kernel_rows(c.senv, [*old_kernels, *new_kernels])
            assert all(rows[k] == ("TERMINATED", "STALE_KERNEL") for k in old_kernels), rows
            for k in new_kernels:
                assert rows[k][0] == "RUNNING" and len(kernel_processes(k)) == 1
            for sid in old:
                c.wait_status(sid, SessionStatus.TERMINATED)
            assert all(c.session(s).status == SessionStatus.RUNNING for s in new)
