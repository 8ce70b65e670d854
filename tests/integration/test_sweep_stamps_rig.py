"""SC-FA-002: a sweep stamps an agent's last check only when it read all that agent's kernels."""

from __future__ import annotations

import pytest

from sokovan.types import HealthCheckStatus, KernelPresence, RunTrigger, SessionStatus
from tests.rig import Rig, add_session

pytestmark = pytest.mark.integration

SWEEP = "sweep_stale_kernels"
HEALTHY = KernelPresence(HealthCheckStatus.HEALTHY, last_presence=1000.0)


async def test_full_sweep_passes_agents_for_their_stamps(rig: Rig) -> None:
    """Every RUNNING kernel read: each kernel's agent goes with it, to be stamped."""
    _, kids = add_session(rig, ["a1", "a2"], status=SessionStatus.RUNNING)
    rig.presence.statuses.update(dict.fromkeys(kids, HEALTHY))

    await rig.coordinator.run(SWEEP, RunTrigger.BEAT)

    assert [sorted(map(str, b)) for b in rig.presence.agent_scans] == [["a1", "a2"]]


async def test_budgeted_or_scoped_sweep_stamps_no_agent(rig: Rig) -> None:
    """A budget or a scope leaves kernels unread: no agent may look checked (orphan rule)."""
    _, kids = add_session(rig, ["a1", "a1", "a2"], status=SessionStatus.RUNNING)
    rig.presence.statuses.update(dict.fromkeys(kids, HEALTHY))

    await rig.coordinator.run(SWEEP, RunTrigger.MANUAL, budget=2)
    await rig.coordinator.run(SWEEP, RunTrigger.MANUAL, scope=[str(kids[0])])

    assert [len(b) for b in rig.presence.scans] == [2, 1]
    assert rig.presence.agent_scans == [[], []]
