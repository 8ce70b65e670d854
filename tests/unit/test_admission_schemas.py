"""Public payload schemas: each hostile payload is refused with its field named (SC-AD-001/002)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from sokovan.admission.parse import (
    parse_call,
    parse_create,
    parse_create_call,
    parse_image_name,
    parse_run_handler,
    parse_terminate,
    refuse_arguments,
)
from sokovan.admission.refusal import INVALID, Refusal, echo
from sokovan.admission.schemas import Limits, TerminateSessionsPayload
from sokovan.records import SessionRequest
from sokovan.types import ClusterMode, NetworkType
from tests.admission_cases import CASES, IMAGE, Hostile

LIMITS = Limits(handlers=frozenset({"terminate_sessions", "sweep_stale_kernels"}))


def refusal_of(case: Hostile) -> dict[str, Any] | None:
    """What the domain answers for a case, as the task would return it."""
    parsed: Any
    if case.task == "sokovan.session.create":
        parsed = parse_create_call((), case.kwargs, LIMITS)
    elif case.task == "sokovan.session.terminate":
        parsed = parse_terminate((), case.kwargs)
    elif case.task == "sokovan.sessions.terminate":
        parsed = parse_call(TerminateSessionsPayload, (), case.kwargs)
    elif case.task == "sokovan.handler.run":
        parsed = parse_run_handler((), case.kwargs, LIMITS)
    else:
        return refuse_arguments((), case.kwargs)
    return parsed.to_json() if isinstance(parsed, Refusal) else None


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_payload_is_refused_naming_its_field(case: Hostile) -> None:
    """SC-AD-001, SC-AD-002: one refusal with kind and field; a short echo, never the payload."""
    answer = refusal_of(case)
    assert answer is not None, f"{case.id} was accepted"
    assert set(answer) == {"error", "kind", "field"}
    assert answer["kind"] == INVALID
    assert answer["field"] == case.field, answer
    assert len(json.dumps(answer)) < 700, answer
    if case.field:
        assert answer["error"].startswith(case.field[:40]), answer


def test_valid_request_becomes_a_session_request() -> None:
    parsed = parse_create(
        {
            "image": IMAGE,
            "kernels": 3,
            "cluster_mode": "multi-node",
            "network_type": "host",
            "resource_slots": {"cpu": 0.5, "mem": "1073741824", "cuda.shares": 1},
            "environ": {"A": "b"},
            "agents": ["a1"],
            "queue": False,
        },
        LIMITS,
    )
    assert isinstance(parsed, SessionRequest)
    assert parsed.cluster_mode == ClusterMode.MULTI_NODE
    assert parsed.network_type == NetworkType.HOST
    assert parsed.resource_slots.to_json() == {
        "cpu": "0.5",
        "mem": "1073741824",
        "cuda.shares": "1",
    }
    assert parsed.agents == ("a1",) and parsed.queue is False


def test_defaults_match_the_documented_ones() -> None:
    parsed = parse_create({"image": IMAGE}, LIMITS)
    assert isinstance(parsed, SessionRequest)
    assert parsed.resource_slots.to_json() == {"cpu": "1", "mem": "1073741824"}
    assert (parsed.kernels, parsed.scaling_group, parsed.queue) == (1, "default", True)


def test_kernel_bound_follows_the_setting() -> None:
    assert isinstance(
        parse_create({"image": IMAGE, "kernels": 8}, Limits(max_kernels=8)), SessionRequest
    )
    refused = parse_create({"image": IMAGE, "kernels": 9}, Limits(max_kernels=8))
    assert isinstance(refused, Refusal) and refused.error == "kernels: at most 8 kernels (got 9)"


def test_positional_arguments_map_to_fields() -> None:
    sid = str(uuid.uuid4())
    parsed = parse_terminate((sid, "IDLE_TIMEOUT"), {})
    assert not isinstance(parsed, Refusal)
    assert (str(parsed.session_id), parsed.reason) == (sid, "IDLE_TIMEOUT")
    assert isinstance(parse_terminate((sid,), {"session_id": sid}), Refusal)


def test_no_argument_tasks_accept_nothing_else() -> None:
    assert refuse_arguments((), {}) is None
    assert refuse_arguments((1,), {}) == {
        "error": "at most 0 positional argument(s), got 1",
        "kind": INVALID,
        "field": None,
    }


def test_echo_never_renders_a_whole_value() -> None:
    assert len(echo("x" * 5_000_000)) < 80
    assert echo(list(range(100_000))) == "a list of 100000 item(s)"
    assert echo(10**5000).startswith("an integer of")


def test_image_names_of_the_cli() -> None:
    assert parse_image_name(IMAGE) == IMAGE
    for bad in ("", "a b", "x" * 256, 5):
        refused = parse_image_name(bad)
        assert isinstance(refused, Refusal) and refused.field == "image"
