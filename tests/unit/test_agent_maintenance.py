"""Cordoned agents in placement decisions, and the registration schema: no I/O."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from sokovan.admission.parse import parse_call
from sokovan.admission.refusal import Refusal
from sokovan.admission.schemas import DrainAgentPayload, RegisterAgentPayload
from sokovan.errors import AgentCordoned, NoCapacity
from sokovan.records import AgentRow, SessionRequest
from sokovan.scheduler.submit import could_ever_fit, place
from sokovan.types import AgentId, ClusterMode, ResourceSlot


def agent(name: str, cpu: int, *, schedulable: bool = True) -> AgentRow:
    return AgentRow(
        AgentId(name),
        "tcp://127.0.0.1:1",
        capacity=ResourceSlot.from_json({"cpu": cpu}),
        schedulable=schedulable,
    )


def req(**kw: Any) -> SessionRequest:
    return SessionRequest(image="img", resource_slots=ResourceSlot.from_json({"cpu": 1}), **kw)


def test_cordoned_agent_gets_no_new_kernel() -> None:
    """SC-OP-001: the freest agent is skipped while cordoned, used again once uncordoned."""
    big, small = agent("a1", 8, schedulable=False), agent("a2", 2)
    assert place(req(kernels=2), [big, small], {}) == ["a2", "a2"]
    many = req(kernels=2, cluster_mode=ClusterMode.MULTI_NODE)
    assert place(many, [big, small], {}) == ["a2", "a2"]
    assert place(req(kernels=2), [replace(big, schedulable=True), small], {}) == ["a1", "a1"]


def test_session_only_a_cordoned_agent_can_hold_waits_instead_of_being_refused() -> None:
    """SC-OP-001: cordon is temporary, so the pending queue keeps such a session."""
    agents = [agent("a1", 8, schedulable=False), agent("a2", 2)]
    with pytest.raises(NoCapacity):
        place(req(kernels=4), agents, {})
    assert could_ever_fit(req(kernels=4), agents)
    assert not could_ever_fit(req(kernels=9), agents)


def test_naming_a_cordoned_agent_is_refused_by_state() -> None:
    """SC-OP-001: a request naming a cordoned agent is refused on `agents` (not bad input)."""
    with pytest.raises(AgentCordoned) as e:
        place(req(agents=(AgentId("a1"),)), [agent("a1", 8, schedulable=False)], {})
    assert e.value.field == "agents"
    assert "cordoned" in str(e.value)


def test_maintenance_state_names() -> None:
    row = agent("a1", 1)
    assert row.maintenance == "none" and row.takes_kernels
    cordoned = replace(row, schedulable=False)
    assert cordoned.maintenance == "cordoned" and not cordoned.takes_kernels
    assert replace(cordoned, drain_mode="terminate").maintenance == "draining"
    assert replace(row, status="LOST").takes_kernels is False


GOOD = {"agent_id": "i-node1", "rpc_addr": "tcp://10.0.0.5:6001"}

# SC-OP-003: registration input -> the field its refusal names.
REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"rpc_addr": "tcp://127.0.0.1:99999"}, "rpc_addr"),
    ({"rpc_addr": "tcp://127.0.0.1:0"}, "rpc_addr"),
    ({"rpc_addr": "tcp://127.0.0.1:-1"}, "rpc_addr"),
    ({"rpc_addr": "tcp://127.0.0.1"}, "rpc_addr"),
    ({"rpc_addr": "ipc:///tmp/agent"}, "rpc_addr"),
    ({"rpc_addr": "http://10.0.0.5:6001"}, "rpc_addr"),
    ({"rpc_addr": "tcp://:6001"}, "rpc_addr"),
    ({"rpc_addr": "tcp://a b:6001"}, "rpc_addr"),
    ({"rpc_addr": ""}, "rpc_addr"),
    ({"agent_id": ""}, "agent_id"),
    ({"agent_id": "has space"}, "agent_id"),
    ({"scaling_group": ""}, "scaling_group"),
    ({"capacity": {"cpu": -3, "mem": 1}}, "capacity.cpu"),
    ({"capacity": {"cpu": "nan", "mem": 1}}, "capacity.cpu"),
    ({"capacity": {"cpu": math.inf, "mem": 1}}, "capacity.cpu"),
    ({"capacity": {"cpu": "1e30", "mem": 1}}, "capacity.cpu"),
    ({"capacity": {"cpu": 200_000, "mem": 1}}, "capacity.cpu"),
    ({"capacity": {"cpu": 0, "mem": 1}}, "capacity.cpu"),
    ({"capacity": {"cpu": 4, "mem": 0}}, "capacity.mem"),
    ({"capacity": {"cpu": 4}}, "capacity.mem"),
    ({"capacity": {"cpu": 4, "mem": 2**61}}, "capacity.mem"),
    ({"capacity": {"cpu": True, "mem": 1}}, "capacity.cpu"),
    ({"capacity": {"gpu": 1, "cpu": 4, "mem": 1}}, "capacity.gpu"),
    ({"public_key": "x"}, "public_key"),
]


@pytest.mark.parametrize(("change", "field"), REFUSED)
def test_registration_schema_refuses_naming_the_field(change: dict[str, Any], field: str) -> None:
    """SC-OP-003: every bad registration is a refusal naming its field, before any write."""
    parsed = parse_call(RegisterAgentPayload, (), {**GOOD, **change})
    assert isinstance(parsed, Refusal), change
    assert parsed.field == field and parsed.error.startswith(f"{field}:"), parsed
    assert parsed.invalid_input


def test_registration_schema_accepts_a_real_agent() -> None:
    parsed = parse_call(RegisterAgentPayload, (), {**GOOD, "capacity": {"cpu": "64", "mem": 2**38}})
    assert isinstance(parsed, RegisterAgentPayload)
    ipv6 = parse_call(RegisterAgentPayload, (), {**GOOD, "rpc_addr": "tcp://[::1]:65535"})
    assert isinstance(ipv6, RegisterAgentPayload)


@pytest.mark.parametrize("seconds", [-1, math.nan, math.inf, 86_401, "60", True])
def test_drain_deadline_is_a_bounded_number_of_seconds(seconds: Any) -> None:
    """SC-OP-002: a drain's deadline is finite, 0..a day, and a number."""
    parsed = parse_call(DrainAgentPayload, (), {"agent_id": "a1", "deadline_seconds": seconds})
    assert isinstance(parsed, Refusal) and parsed.field == "deadline_seconds", parsed
