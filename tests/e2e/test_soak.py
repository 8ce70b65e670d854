"""The chaos soak, short (SC-CV-007): `python -m bench.soak` with each fault once."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos.results import SoakOptions, print_report
from bench.chaos.rig import FAULT_KINDS
from bench.soak import soak

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480), pytest.mark.xdist_group("whole-cluster")]


async def test_sc_cv_007_chaos_soak_settles_with_every_invariant(tmp_path: Path) -> None:
    """SC-CV-007: every invariant holds within 60 s of the last fault.

    Given a real cluster (Valkey with an append-only file, SQLite, three reference agents
    running process kernels, a worker tree and beat) under a mixed workload (sessions of one
    and of several kernels created, some terminated, kernel processes SIGKILLed behind the
    scheduler's back, their sessions then left for the scheduler to end; fixed seed),
    When the worker tree, beat, Valkey and one agent are each SIGKILLed and started again
    once, in that order, 20-25 s apart,
    Then within 60 s of the last fault no session or kernel is in a transitional state,
    every acknowledged terminate is done, each agent's occupied slots are those of the
    kernels it runs, no kernel is counted twice, every acknowledged create exists, and a
    new session reaches RUNNING.
    """
    options = SoakOptions(seed=7, faults=FAULT_KINDS, gap=(20.0, 25.0), keep=tmp_path / "soak")

    result = await soak(options)

    print_report(result)  # the figures, in the test's output when it fails
    assert [f.kind for f in result.faults] == list(FAULT_KINDS)
    assert all(f.back_at is not None for f in result.faults), result.faults
    assert sum(t.acked for t in result.tracked) > 10, "the workload created next to nothing"
    assert result.killed, "no kernel was killed behind the scheduler's back"
    assert result.lost, "the agent killed ran no kernel"
    failed = [f"{c.name}: {c.figure}; {c.detail}" for c in result.failed]
    assert not failed, "\n".join(failed)
    assert result.settle is not None, f"not settled within {options.calm:g} s of the last fault"
