"""A whole terminate run on stubs: coordinator, handler, batches and chord body, no SQL.

The rig is tests/terminate_stubs.py, one task per agent batch (run_batch), as a fan-out of
one agent per task runs it.
"""

from __future__ import annotations

from sokovan.scheduler.handlers import terminate_sessions
from sokovan.types import (
    KernelStatus,
    Operation,
    RunStatus,
    RunTrigger,
    SessionStatus,
)
from tests.terminate_stubs import TerminateStubs, in_memory_ledger


async def test_sc_rl_001_terminate_run_on_stubs_counts_moves_and_ends_sessions() -> None:
    """SC-RL-001 on stubs: 2 sessions, 5 kernels, one without agent, destroy fails on one.

    Given the stubs of the store and the ledger, when the terminate handler runs, then the
    run ends partial with 5/3/1/1, destroyed kernels are TERMINATED, the agentless one
    CANCELLED, the failed one stays TERMINATING, and only the finished session ends.
    """
    s = TerminateStubs(in_memory_ledger)
    s1, (k1, k2, k3) = s.add_session(["a1", "a1", None])
    s2, (k4, k5) = s.add_session(["a2", "a2"])
    s.agents["a2"].script("destroy_kernel", RuntimeError("container stuck"), key=k4)

    report = await s.coordinator.run(terminate_sessions.NAME, RunTrigger.BEAT)

    assert report.run_id is not None and report.status == RunStatus.PARTIAL
    run = await s.ledger.get_run(report.run_id)
    assert (run.requested, run.succeeded, run.failed, run.skipped) == (5, 3, 1, 1)
    assert run.operation == str(Operation.DESTROY_KERNELS) and run.fanout_id
    assert s.destroyed() == sorted(str(k) for k in (k1, k2, k4, k5))
    assert sorted(b.agent_id for b in s.chord.batches) == ["a1", "a2"]
    status = {k: s.store.kernels[k].status for k in (k1, k2, k3, k4, k5)}
    assert status == {
        k1: KernelStatus.TERMINATED,
        k2: KernelStatus.TERMINATED,
        k3: KernelStatus.CANCELLED,
        k4: KernelStatus.TERMINATING,
        k5: KernelStatus.TERMINATED,
    }
    assert (await s.store.get_session(s1)).status == SessionStatus.TERMINATED
    assert (await s.store.get_session(s2)).status == SessionStatus.TERMINATING


async def test_a_run_with_no_target_calls_no_agent() -> None:
    """SC-RL-002 on stubs: a session that is not TERMINATING is no target of the run."""
    s = TerminateStubs(in_memory_ledger)
    sid, _ = s.add_session(["a1"])
    await s.store.transition_sessions([sid], SessionStatus.RUNNING, [SessionStatus.TERMINATING])

    report = await s.coordinator.run(terminate_sessions.NAME, RunTrigger.BEAT)

    assert report.run_id is not None
    run = await s.ledger.get_run(report.run_id)
    assert (run.status, run.requested, run.succeeded, run.failed) == (
        RunStatus.SUCCEEDED,
        0,
        0,
        0,
    )
    assert s.destroyed() == [] and s.chord.batches == []
