"""Reply frames, reply shapes and agent text, checked without a network (SC-FA-007/008)."""

from __future__ import annotations

import json
from typing import Any

import attrs
import msgpack
import pytest
from callosum.abc import RawHeaderBody
from callosum.rpc.message import ResultMetadata, RPCMessage, RPCMessageTypes
from hypothesis import given
from hypothesis import strategies as st

from sokovan.agent import shapes, wire
from sokovan.agent.envelope import HEADER_FIELDS, frame_problem, reply_key
from sokovan.agentd.faults import Faults
from sokovan.agentd.frames import FrameKind, hostile_frame
from sokovan.errors import (
    AgentRemoteError,
    InvalidRequest,
    ReplyShapeError,
    WireError,
    describe_error,
)
from sokovan.scheduler.launcher.agent_jobs import jsonable
from sokovan.scheduler.launcher.status_data import error_info_of
from sokovan.text import bounded_text

ENVELOPE_KINDS = {
    FrameKind.HEADER_TYPE,
    FrameKind.HEADER_FUNCTION,
    FrameKind.HEADER_GARBAGE,
    FrameKind.HEADER_DEEP,
    FrameKind.HEADER_COMPRESSED,
    FrameKind.ENVELOPE_DEEP,
    FrameKind.BAD_META,
    FrameKind.BODY_NOT_BYTES,
}


def honest(body: Any = True, seq: int = 7) -> RawHeaderBody:
    """A RESULT frame as an agent's callosum sends it."""
    # callosum's invoke sends the order key b"" although it annotates it str.
    okey: Any = b""
    request = RPCMessage(b"peer", RPCMessageTypes.FUNCTION, "check_running", okey, seq, None, None)
    reply: RPCMessage = RPCMessage.result(request, body)  # type: ignore[no-untyped-call]
    return reply.encode(wire.packb)


def decodes_in_callosum(frame: RawHeaderBody) -> RPCMessage:
    """What callosum's receive loop and invoke do with a frame; raises where they would."""
    message = RPCMessage.decode(frame, wire.peer_deserialize)
    hash(message.request_id)  # the resolver keys pending calls by it
    if message.msgtype in (RPCMessageTypes.FAILURE, RPCMessageTypes.ERROR):
        metadata: Any = message.metadata
        AgentRemoteError(*attrs.astuple(metadata)[:2])
    return message


def test_sc_fa_007_an_honest_frame_passes_and_decodes() -> None:
    """SC-FA-007: the guard lets a well-formed reply through untouched."""
    frame = honest({"a": [1, 2]})
    assert frame_problem(frame) is None
    assert decodes_in_callosum(frame).body == {"a": [1, 2]}


@pytest.mark.parametrize("kind", sorted(ENVELOPE_KINDS))
def test_sc_fa_007_every_bad_envelope_is_named_before_callosum_sees_it(kind: FrameKind) -> None:
    """SC-FA-007: each hostile envelope gets a reason, and is one that would break callosum."""
    frame = hostile_frame(kind, honest())
    problem = frame_problem(frame)
    assert problem is not None and len(problem) < 400
    broke = False
    try:
        message = decodes_in_callosum(frame)
        # A FUNCTION frame decodes, then asks the client to serve an unknown method.
        broke = message.msgtype not in (RPCMessageTypes.RESULT, RPCMessageTypes.FAILURE)
        broke = broke or message.metadata is None or isinstance(message.body, wire.Undecodable)
    except Exception:
        broke = True
    assert broke, kind


@pytest.mark.parametrize(
    "kind", [FrameKind.BODY_GARBAGE, FrameKind.BODY_DEEP, FrameKind.BODY_PICKLE]
)
def test_sc_fa_007_bad_bodies_pass_the_guard_and_decode_to_a_value(kind: FrameKind) -> None:
    """SC-FA-007: a bad body inside a good envelope fails its call only, not the connection."""
    frame = hostile_frame(kind, honest())
    assert frame_problem(frame) is None
    body = decodes_in_callosum(frame).body
    assert isinstance(body, wire.Undecodable | wire.OpaqueExt)


ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can encode
wild = (
    st.none()
    | st.booleans()
    | ints
    | st.floats()
    | st.text(max_size=3)
    | st.lists(ints, max_size=2)
    | st.dictionaries(st.text(max_size=2), ints, max_size=1)
)


def mostly(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`right` nine times in ten, else anything: frames that pass the guard stay common."""
    return st.integers(0, 9).flatmap(lambda n: right if n else wild)


headers = st.fixed_dictionaries(
    {
        "type": mostly(st.sampled_from([2, 3, 4, 6])),
        "zip": mostly(st.just(False)),
        "meth": mostly(st.text(max_size=10)),
        "okey": mostly(st.just(b"") | st.text(max_size=3)),
        "seq": mostly(st.integers(0, 2**32)),
    }
)
metas = mostly(
    st.just(msgpack.packb([]))
    | st.builds(lambda *f: msgpack.packb(list(f)), st.text(), st.text(), st.text())
    | st.none()
    | st.binary(max_size=8)
)
bodies = mostly(st.builds(wire.packb, st.booleans()) | st.binary(max_size=16))


@given(headers, st.sets(st.sampled_from(HEADER_FIELDS), max_size=1), metas, bodies)
def test_sc_fa_007_whatever_passes_the_guard_callosum_decodes(
    header: dict[str, Any], dropped: set[str], meta: Any, body: Any
) -> None:
    """SC-FA-007: no frame the guard lets through can stop callosum's receive loop."""
    header = {k: v for k, v in header.items() if k not in dropped}
    data = {"meta": meta, "body": body}
    frame = RawHeaderBody(msgpack.packb(header), msgpack.packb(data), None)
    if frame_problem(frame) is None:
        decodes_in_callosum(frame)


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_sc_fa_007_random_bytes_never_raise_from_the_guard(header: bytes, body: bytes) -> None:
    """SC-FA-007: the guard answers for any bytes, and what it passes decodes."""
    frame = RawHeaderBody(header, body, None)
    if frame_problem(frame) is None:
        decodes_in_callosum(frame)


def test_sc_fa_007_result_metadata_must_be_empty() -> None:
    """SC-FA-007: metadata a RESULT cannot carry is refused, as callosum would choke on it."""
    frame = honest()
    data = msgpack.unpackb(frame.body)
    data["meta"] = msgpack.packb([1, 2])
    bad = RawHeaderBody(frame.header, msgpack.packb(data), None)
    assert "metadata" in (frame_problem(bad) or "")
    assert ResultMetadata().encode() == msgpack.packb([])


GOOD: list[tuple[str, Any]] = [
    ("check_and_pull", {}),
    ("check_and_pull", {"img:1": "task-1"}),
    ("check_running", True),
    ("check_running", False),
    ("check_running", None),
    ("create_kernels", []),
    ("create_kernels", [{"id": "k"}, {}]),
    ("destroy_kernel", None),
    ("assign_port", 1),
    ("assign_port", 65535),
    ("ping", 12),
    ("health", "ok"),
]
BAD: list[tuple[str, Any, str]] = [
    ("check_and_pull", None, "a mapping of image name (str) to status (str)"),
    ("check_and_pull", ["img"], "a mapping of image name (str) to status (str)"),
    ("check_and_pull", {"img": 1}, "a mapping of image name (str) to status (str)"),
    ("check_and_pull", {1: "x"}, "a mapping of image name (str) to status (str)"),
    ("check_running", "no", "a bool or None"),
    ("check_running", 0, "a bool or None"),
    ("check_running", wire.OpaqueExt(6, b"\x80"), "a bool or None"),
    ("create_kernels", None, "a list of mappings, one per kernel"),
    ("create_kernels", {"id": "k"}, "a list of mappings, one per kernel"),
    ("create_kernels", [{}, "k"], "a list of mappings, one per kernel"),
    # SC-CV-009: a real agent's destroy_kernel answers None; nothing else is a destroy reply.
    ("destroy_kernel", wire.OpaqueExt(6, b"\x80"), "None"),
    ("destroy_kernel", {"anything": [1]}, "None"),
    ("destroy_kernel", [[[None]]], "None"),
    ("destroy_kernel", True, "None"),
    ("destroy_kernel", "x" * 1_000_000, "None"),
    ("assign_port", 0, "an int port in 1..65535"),
    ("assign_port", 65536, "an int port in 1..65535"),
    ("assign_port", False, "an int port in 1..65535"),
    ("assign_port", 80.0, "an int port in 1..65535"),
    ("assign_port", None, "an int port in 1..65535"),
]


@pytest.mark.parametrize(("method", "reply"), GOOD)
def test_sc_fa_008_right_shapes_come_back_unchanged(method: str, reply: Any) -> None:
    """SC-FA-008: a reply of the right shape is returned as it is."""
    assert shapes.check_reply("a1", method, reply) is reply


@pytest.mark.parametrize(("method", "reply", "expected"), BAD)
def test_sc_fa_008_wrong_shapes_name_the_method_and_the_shape(
    method: str, reply: Any, expected: str
) -> None:
    """SC-FA-008: a wrong shape is a ReplyShapeError naming the method and the expected shape."""
    with pytest.raises(ReplyShapeError) as caught:
        shapes.check_reply("a1", method, reply)
    assert (caught.value.method, caught.value.expected) == (method, expected)
    assert str(caught.value).startswith(f"agent a1: {method} replied ")
    assert str(caught.value).endswith(f"expected {expected}")


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner)


json_values = st.recursive(
    st.none() | st.booleans() | ints | st.floats() | st.text(max_size=8), _nested, max_leaves=10
)


@given(st.sampled_from(sorted(shapes.SHAPES)), json_values)
def test_sc_fa_008_any_reply_passes_or_is_a_reply_shape_error(method: str, reply: Any) -> None:
    """SC-FA-008: whatever an agent answers, the check raises nothing but ReplyShapeError."""
    try:
        shapes.check_reply("a1", method, reply)
    except ReplyShapeError as e:
        assert method in str(e)


def test_sc_fa_008_a_huge_wrong_reply_is_quoted_bounded() -> None:
    """SC-FA-008: the error quotes a sample of a wrong reply, not all of it."""
    with pytest.raises(ReplyShapeError) as caught:
        shapes.check_reply("a1", "check_running", "y" * 1_000_000)
    assert len(str(caught.value)) < 500


@given(st.text(max_size=3000), st.integers(0, 2100))
def test_bounded_text_keeps_a_prefix_within_the_limit(text: str, limit: int) -> None:
    bounded = bounded_text(text, limit)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size <= limit:
        assert bounded == text
    else:
        kept, _, suffix = bounded.rpartition("… (")
        assert text.startswith(kept)
        assert len(kept.encode("utf-8", "surrogatepass")) <= limit
        assert suffix == f"{size - len(kept.encode('utf-8', 'surrogatepass'))} bytes cut)"


def test_sc_fa_007_agent_error_text_is_bounded_at_construction() -> None:
    """SC-FA-007: a 5 MB error from an agent is cut to ~2 KiB wherever it is built."""
    error = AgentRemoteError("N" * 10_000, "x" * 5 * 1024 * 1024, "destroy_kernel")
    assert len(error.message.encode()) < 2100 and error.message.endswith("bytes cut)")
    assert len(error.name.encode()) < 300
    assert len(str(error).encode()) < 2500


def test_sc_fa_007_agent_text_is_bounded_where_it_is_stored() -> None:
    """SC-FA-007: outcome errors, session error info and stored answers hold no 5 MB text."""
    huge = "z" * 5 * 1024 * 1024
    remote = AgentRemoteError("InjectedFault", huge, "create_kernels")
    assert len(describe_error(remote, with_type=True).encode()) < 2500
    assert len(describe_error(WireError(huge)).encode()) <= 4096 + 40
    for exc in (remote, WireError(huge), ExceptionGroup("both", [remote, WireError(huge)])):
        info = error_info_of(exc)
        assert len(json.dumps(info)) < 20_000, type(exc)
    answer = jsonable({"id": huge, huge: [huge.encode(), wire.OpaqueExt(6, huge.encode())]})
    assert len(json.dumps(answer)) < 20_000


def test_frame_fault_takes_a_known_kind_and_names_the_field_otherwise() -> None:
    faults = Faults()
    faults.apply({"op": "frame", "method": "check_running", "kind": "header_deep"})
    fault = faults.fault_for("check_running", [])
    assert fault is not None and fault.frame is FrameKind.HEADER_DEEP
    assert fault.to_json()["frame"] == "header_deep"
    with pytest.raises(InvalidRequest, match="fault `kind` 'nope' is not one of header_type"):
        faults.apply({"op": "frame", "method": "check_running", "kind": "nope"})


def test_sc_fa_007_a_bad_frame_says_which_call_it_answers_when_its_header_can() -> None:
    """SC-FA-007: the header's method and sequence number pick the one call to fail."""
    frame = honest(seq=41)
    assert reply_key(hostile_frame(FrameKind.HEADER_TYPE, frame)) == ("check_running", 41)
    assert reply_key(hostile_frame(FrameKind.ENVELOPE_DEEP, frame)) == ("check_running", 41)
    assert reply_key(hostile_frame(FrameKind.HEADER_GARBAGE, frame)) is None
    assert reply_key(hostile_frame(FrameKind.HEADER_DEEP, frame)) is None
    assert reply_key(RawHeaderBody(msgpack.packb({"meth": "m", "seq": True}), b"", None)) is None
