"""Placement decisions on given agents and occupancy: no I/O (SC-AD-004, SC-AD-005)."""

from __future__ import annotations

from typing import Any

import pytest

from sokovan.errors import InvalidRequest, NoCapacity, UnknownAgent
from sokovan.records import AgentRow, SessionRequest
from sokovan.scheduler.submit import could_ever_fit, place
from sokovan.types import AgentId, ClusterMode, ResourceSlot


def agent(name: str, cpu: int, status: str = "ALIVE") -> AgentRow:
    return AgentRow(
        AgentId(name),
        "tcp://127.0.0.1:1",
        status=status,
        capacity=ResourceSlot.from_json({"cpu": cpu}),
    )


def req(**kw: Any) -> SessionRequest:
    return SessionRequest(image="img", resource_slots=ResourceSlot.from_json({"cpu": 1}), **kw)


AGENTS = [agent("a1", 4), agent("a2", 2)]


def test_single_node_goes_to_the_freest_agent_that_holds_all_kernels() -> None:
    assert place(req(kernels=3), AGENTS, {}) == ["a1"] * 3
    used = {"a1": ResourceSlot.from_json({"cpu": 3})}
    assert place(req(kernels=2), AGENTS, used) == ["a2"] * 2
    with pytest.raises(NoCapacity) as e:
        place(req(kernels=5), AGENTS, {})
    assert e.value.field == "resource_slots"


def test_multi_node_spreads_kernels_and_never_exceeds_an_agent() -> None:
    chosen = place(req(kernels=6, cluster_mode=ClusterMode.MULTI_NODE), AGENTS, {})
    assert sorted(chosen) == ["a1"] * 4 + ["a2"] * 2
    with pytest.raises(NoCapacity):
        place(req(kernels=7, cluster_mode=ClusterMode.MULTI_NODE), AGENTS, {})


def test_named_agents_are_checked_for_room_and_liveness() -> None:
    used = {"a2": ResourceSlot.from_json({"cpu": 2})}
    assert place(req(agents=(AgentId("a1"),), kernels=2), AGENTS, used) == ["a1", "a1"]
    with pytest.raises(NoCapacity):
        place(req(agents=(AgentId("a2"),)), AGENTS, used)
    with pytest.raises(UnknownAgent) as e:
        place(req(agents=(AgentId("zz"),)), AGENTS, {})
    assert e.value.field == "agents"
    with pytest.raises(UnknownAgent):
        place(req(agents=(AgentId("lost"),)), [agent("lost", 8, "LOST")], {})
    with pytest.raises(InvalidRequest):
        place(req(agents=(AgentId("a1"), AgentId("a2")), kernels=3), AGENTS, {})


def test_a_session_waits_only_if_some_agent_could_ever_hold_it() -> None:
    assert could_ever_fit(req(kernels=4), AGENTS)
    assert not could_ever_fit(req(kernels=5), AGENTS)
    assert could_ever_fit(req(kernels=50), [])  # no agent yet: one may join
    assert could_ever_fit(req(kernels=50), [agent("x", 1, "LOST")])
