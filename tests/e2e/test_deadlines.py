"""Every transitional state has a deadline and a way out, on real agents and a real worker."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sokovan.db.repository import NewKernel
from sokovan.db.schema import kernels as kernels_table
from sokovan.db.schema import sessions as sessions_table
from sokovan.db.stats import RunStats
from sokovan.scheduler.handlers import reconcile_leftovers, terminate_sessions
from sokovan.types import (
    KernelId,
    KernelStatus,
    ResourceSlot,
    SessionId,
    SessionStatus,
)
from tests.agents import set_fault
from tests.cluster import Cluster, ghost_agent, kernel_rows, running_cluster
from tests.integration.test_operator_cli import cli as acli_sync
from tests.services import run_cli
from tests.workers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

DEADLINE = 6
FAST = {
    "terminating_deadline": str(DEADLINE),
    "pulling_deadline": "8",
    "creating_deadline": "6",
    "pull_attempts": "2",
    "retry_backoff": "1",
    "retry_backoff_max": "2",
    "agent_call_timeout": "2",
    "terminate_interval": "1",
    "launch_interval": "1",
    "intervals": "reconcile_leftovers=1",
    "agent_failure_threshold": "100",
}


def _running_on(c: Cluster, agent: str, name: str) -> SessionId:
    sid = c.create(name=name, agents=[agent])
    assert c.wait_status(sid, SessionStatus.RUNNING).status == SessionStatus.RUNNING
    return sid


def _forced_outcomes(c: Cluster, kernel: KernelId) -> list[dict[str, object]]:
    found = []
    for run in c.ledger.list_runs(handler=terminate_sessions.NAME, limit=200):
        for item in c.ledger.items(run.id):
            if item.item_id == str(kernel) and item.evidence.get("verdict") == "forced":
                found.append({"error": item.error, **item.evidence})
    return found


async def test_sc_dl_001_and_002_unanswered_destroy_forced_then_leftover_destroyed(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-DL-001, SC-DL-002: an agent that never answers destroy_kernel.

    Given a RUNNING session on agent a1 whose destroy_kernel hangs past the call timeout,
    when it is terminated, destroy is retried with backoff; after the TERMINATING deadline
    the kernel is TERMINATED (FORCE_TERMINATED), the session TERMINATED, and the run's
    outcome says which deadline passed. When the agent answers again, reconciliation
    destroys the leftover container (the agent no longer has the kernel) and records it."""
    async with running_cluster(tmp_path, valkey_url, runtime="sim", settings=FAST, beat=True) as c:
        sid = _running_on(c, "a1", "stuck")
        [kernel] = c.session(sid).kernels
        await set_fault(
            c.senv.settings.redis_url,
            "a1",
            {"op": "hang", "method": "destroy_kernel", "seconds": 30},
        )

        answer = c.send("sokovan.session.terminate", session_id=str(sid))
        assert answer["terminating"] is True
        c.wait_status(sid, SessionStatus.TERMINATED, timeout=DEADLINE + 40)

        status, info = kernel_rows(c.senv, [kernel.id])[str(kernel.id)]
        assert (status, info) == ("TERMINATED", "FORCE_TERMINATED")
        [forced] = _forced_outcomes(c, kernel.id)
        assert f"TERMINATING deadline of {DEADLINE}s passed" in str(forced["deadline"])
        assert int(str(forced["attempts"])) >= 1 and forced["last_error"]
        [leftover] = c.repo.leftovers([kernel.id])
        assert leftover.reason == "FORCE_TERMINATED" and leftover.agent_id == "a1"

        # SC-DL-002: the agent answers again; its container is destroyed and recorded.
        await set_fault(c.senv.settings.redis_url, "a1", {"op": "clear"})
        wait_for(
            lambda: c.repo.leftovers([kernel.id])[0].destroyed_at is not None,
            timeout=40,
            what="the leftover container to be destroyed",
        )
        runs = c.ledger.list_runs(handler=reconcile_leftovers.NAME, limit=50)
        done = [i for r in runs for i in c.ledger.items(r.id) if i.item_id == str(kernel.id)]
        assert any(i.ok for i in done), done
        held = await _agent_kernels(c, "a1")
        assert str(kernel.id) not in held


async def _agent_kernels(c: Cluster, agent: str) -> set[str]:
    from tests.agents import RpcClient

    async with RpcClient(c.agents.addr(agent), agent_id=agent) as rpc:
        status = await rpc.call("sokovan_control", {"op": "status"})
    return {str(k) for k in (status or {}).get("kernels", {})}


async def test_sc_dl_001_agent_at_a_dead_address(tmp_path: Path, valkey_url: str) -> None:
    """SC-DL-001: a session on an agent registered where nothing listens.

    The destroy never connects; within the deadline plus a tick the kernel is TERMINATED
    (FORCE_TERMINATED), its session TERMINATED, and its slots no longer count as occupied."""
    async with running_cluster(tmp_path, valkey_url, runtime="sim", settings=FAST, beat=True) as c:
        ghost = ghost_agent(c)
        sid = SessionId(uuid.uuid4())
        kid = KernelId(uuid.uuid4())
        c.repo.create_session(
            session_id=sid,
            name="ghostly",
            kernels_=[NewKernel(kid, ghost, "python", ResourceSlot.from_json({"cpu": "1"}))],
            status=SessionStatus.RUNNING,
        )
        c.repo.transition_kernels([kid], KernelStatus.RUNNING, list(KernelStatus))

        answer = c.send("sokovan.session.terminate", session_id=str(sid))
        assert answer["terminating"] is True
        c.wait_status(sid, SessionStatus.TERMINATED, timeout=DEADLINE + 40)

        assert kernel_rows(c.senv, [kid])[str(kid)] == ("TERMINATED", "FORCE_TERMINATED")
        assert _forced_outcomes(c, kid)
        assert c.repo.occupied_by_agent().get(ghost, ResourceSlot()).get("cpu", 0) == 0


async def test_sc_dl_005_force_on_unreachable_and_on_answering_agents(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-DL-005: `--force` (force=True on the public task).

    On a session whose agent does not answer it takes the deadline path at once (no
    waiting for the TERMINATING deadline, which is long here); on a session whose agent
    answers it destroys normally, with no forced outcome."""
    slow = {**FAST, "terminating_deadline": "3600"}
    async with running_cluster(tmp_path, valkey_url, runtime="sim", settings=slow, beat=True) as c:
        stuck = _running_on(c, "a1", "stuck")
        fine = _running_on(c, "a2", "fine")
        await set_fault(
            c.senv.settings.redis_url,
            "a1",
            {"op": "hang", "method": "destroy_kernel", "seconds": 30},
        )

        for sid in (stuck, fine):
            answer = c.send("sokovan.session.terminate", session_id=str(sid), force=True)
            assert answer["terminating"] is True and answer["force"] is True
        c.wait_status(stuck, SessionStatus.TERMINATED, timeout=40)
        c.wait_status(fine, SessionStatus.TERMINATED, timeout=40)

        [k_stuck] = c.session(stuck).kernels
        [k_fine] = c.session(fine).kernels
        rows = kernel_rows(c.senv, [k_stuck.id, k_fine.id])
        assert rows[str(k_stuck.id)] == ("TERMINATED", "FORCE_TERMINATED")
        assert rows[str(k_fine.id)][0] == "TERMINATED"
        assert rows[str(k_fine.id)][1] != "FORCE_TERMINATED"
        assert _forced_outcomes(c, k_stuck.id) and not _forced_outcomes(c, k_fine.id)


async def test_sc_dl_001_a_stuck_termination_says_when_it_gives_up_and_why(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-DL-001 seen by an operator: Given a RUNNING session on a1 whose destroy_kernel
    hangs and a long TERMINATING deadline, when it is terminated (no force), then
    `sokovan.session.get` (and `session show --json`) gives `deadline_at`, an hour after the
    move, and the kernel's failed destroy attempts with the last error naming a1; `session
    show` says when TERMINATING gives up, what happens then, and that --force gives the
    kernel up now; `session wait` fails with the same in its one line. A RUNNING session has
    no deadline and no attempts."""
    slow = {**FAST, "terminating_deadline": "3600"}
    async with running_cluster(tmp_path, valkey_url, runtime="sim", settings=slow, beat=True) as c:
        stuck = _running_on(c, "a1", "stuck")
        running = c.send("sokovan.session.get", session_id=str(stuck))
        assert running["deadline_at"] is None
        assert [(k["attempts"], k["last_error"]) for k in running["kernels"]] == [(0, None)]
        await set_fault(
            c.senv.settings.redis_url,
            "a1",
            {"op": "hang", "method": "destroy_kernel", "seconds": 120},
        )

        c.send("sokovan.session.terminate", session_id=str(stuck))
        moved_at = datetime.now(UTC)
        wait_for(
            lambda: c.send("sokovan.session.get", session_id=str(stuck))["kernels"][0]["attempts"],
            timeout=60,
            what="a failed destroy attempt recorded",
        )

        doc = c.send("sokovan.session.get", session_id=str(stuck))
        assert doc["status"] == "TERMINATING", doc
        left = (datetime.fromisoformat(doc["deadline_at"]) - moved_at).total_seconds()
        assert 3500 < left <= 3600, doc["deadline_at"]
        [kernel] = doc["kernels"]
        assert kernel["attempts"] >= 1 and "a1" in kernel["last_error"], kernel
        shown = await asyncio.to_thread(run_cli, c.senv, "session", "show", str(stuck))
        assert f"TERMINATING gives up at {doc['deadline_at']}: destroy is retried" in shown
        assert f"kernel {kernel['id']} on a1: " in shown and "failed destroy attempt(s)" in shown
        assert "`session terminate --force` gives it up now" in shown
        # Waiting on it fails (exit 1) with the same why in its one line.
        short = await asyncio.to_thread(
            acli_sync, c, "session", "wait", str(stuck), "--for", "terminated", "--timeout", "1"
        )
        assert short.returncode == 1, short.stderr
        line = short.stderr.strip().splitlines()[-1]  # after the progress bar's last frame
        assert line.startswith(f"failed: session {stuck} is TERMINATING, not TERMINATED"), line
        assert f"kernel {kernel['id']} on a1: " in line and "failed destroy attempt(s)" in line
        assert "TERMINATING gives up at " in line, line


async def test_sc_dl_003_pull_that_never_completes(tmp_path: Path, valkey_url: str) -> None:
    """SC-DL-003: check_and_pull never answers.

    The pull is sent again up to the attempts (2 here), then the session fails with error
    info naming the image and the agent; no kernel is created."""
    async with running_cluster(tmp_path, valkey_url, runtime="sim", settings=FAST, beat=True) as c:
        await set_fault(
            c.senv.settings.redis_url,
            "a1",
            {"op": "hang", "method": "check_and_pull", "seconds": 30},
        )
        sid = c.create(name="never-pulled", agents=["a1"])

        s = c.wait_status(sid, SessionStatus.TERMINATING, SessionStatus.TERMINATED, timeout=90)

        error = c.repo.session_status_data(sid)["error"]
        assert error["name"] == "ImagePullTimeout", error
        assert "a1" in error["message"] and "python" in error["message"]
        assert "2 attempt" in error["message"], error
        assert all(k.status != KernelStatus.RUNNING for k in s.kernels)
        assert not await _agent_kernels(c, "a1")


async def test_sc_dl_004_creation_that_never_reports(tmp_path: Path, valkey_url: str) -> None:
    """SC-DL-004: a creation result that never arrives (its task was lost with its worker).

    Given a session whose kernel was created on agent a1 but whose creation result was
    never recorded (still CREATING), past the CREATING deadline the start handler's tick
    fails it with error info saying no creation result arrived within the deadline, and the
    kernel that was created is destroyed on the agent."""
    async with running_cluster(tmp_path, valkey_url, runtime="sim", settings=FAST, beat=True) as c:
        sid = _running_on(c, "a1", "lost-result")
        [kernel] = c.session(sid).kernels
        assert str(kernel.id) in await _agent_kernels(c, "a1")
        # Once the start run has closed, nothing would record the creation result again.
        wait_for(lambda: not c.ledger.running("start_sessions"), timeout=30, what="start run")
        with c.senv.engine.begin() as conn:  # as if the result had never been recorded
            conn.execute(
                sessions_table.update().where(sessions_table.c.id == sid).values(status="CREATING")
            )
            conn.execute(
                kernels_table.update()
                .where(kernels_table.c.id == kernel.id)
                .values(status="CREATING")
            )

        c.wait_status(sid, SessionStatus.TERMINATED, timeout=60)

        error = c.repo.session_status_data(sid)["error"]
        assert error["name"] == "CreationTimeout"
        assert "no creation result arrived within the 6s CREATING deadline" in error["message"]
        assert str(kernel.id) not in await _agent_kernels(c, "a1")


async def test_sc_dl_006_one_stuck_item_does_not_flood_the_ledger(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-DL-006: one unreachable agent, one TERMINATING kernel, many terminate ticks.

    The kernel's attempts are counted on its outcomes, runs stats counts it once in the
    failure ratio, and another session terminates normally meanwhile."""
    slow = {**FAST, "terminating_deadline": "3600", "retry_backoff_max": "4"}
    async with running_cluster(tmp_path, valkey_url, runtime="sim", settings=slow, beat=True) as c:
        stuck = _running_on(c, "a1", "stuck")
        await set_fault(
            c.senv.settings.redis_url,
            "a1",
            {"op": "fail", "method": "destroy_kernel", "message": "unreachable"},
        )
        c.send("sokovan.session.terminate", session_id=str(stuck))
        [kernel] = c.session(stuck).kernels
        wait_for(
            lambda: int(c.session(stuck).kernels[0].status_data.get("attempts") or 0) >= 4,
            timeout=60,
            what="four destroy attempts",
        )
        fine = _running_on(c, "a2", "fine")
        c.send("sokovan.session.terminate", session_id=str(fine))
        c.wait_status(fine, SessionStatus.TERMINATED, timeout=30)

        attempts = [
            i.evidence.get("attempt", 1)
            for r in c.ledger.list_runs(handler=terminate_sessions.NAME, limit=500)
            for i in c.ledger.items(r.id)
            if i.item_id == str(kernel.id)
        ]
        assert len(attempts) >= 4 and max(int(a) for a in attempts) >= 4
        [stats] = RunStats(c.senv.engine).handlers(handler=terminate_sessions.NAME)
        assert stats.failed == 1 and stats.retried == len(attempts) - 1
        assert stats.failure_rate == pytest.approx(1 / (1 + stats.succeeded))
        assert c.session(stuck).status == SessionStatus.TERMINATING
