"""The agent RPC codec: round trips, real-agent ext values, and hostile payloads."""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import pickletools
import uuid
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sokovan.agent import wire
from sokovan.agent.safepickle import read_pickle
from sokovan.errors import PickleRejected, WireError

# msgpack bodies produced by a real Backend.AI agent 26.9.6 (its own packb).
IMAGE_REF = bytes.fromhex(
    "c8010307800595f8000000000000008c1861692e6261636b656e642e636f6d6d6f6e2e646f636b65"
    "72948c08496d6167655265669493942981947d94288c046e616d65948c0d737461626c652f707974"
    "686f6e948c0770726f6a656374944e8c03746167948c0f332e392d7562756e747532302e3034948c"
    "087265676973747279948c0d63722e6261636b656e642e6169948c0c617263686974656374757265"
    "948c067838365f3634948c0869735f6c6f63616c94898c085f7461675f736574948c03332e399468"
    "008c0e506c6174666f726d5461675365749493942981944e7d948c055f64617461947d948c067562"
    "756e7475948c0532302e3034947373869462869475622e"
)
RESOURCE_SLOT = bytes.fromhex(
    "c789088005957e000000000000008c1761692e6261636b656e642e636f6d6d6f6e2e747970657394"
    "8c0c5265736f75726365536c6f749493942981944e7d948c0464617461947d94288c03637075948c"
    "07646563696d616c948c07446563696d616c9493948c013294859452948c036d656d94680a8c0a31"
    "303733373431383234948594529475738694622e"
)
BINARY_SIZE = bytes.fromhex(
    "c73c1080059531000000000000008c1761692e6261636b656e642e636f6d6d6f6e2e747970657394"
    "8c0a42696e61727953697a659493944d0004859481942e"
)
ENUM = bytes.fromhex(
    "c748068005953d000000000000008c1761692e6261636b656e642e636f6d6d6f6e2e747970657394"
    "8c104175746f50756c6c4265686176696f729493948c0664696765737494859452942e"
)
# Opcodes our hand-built ImageRef stream may use: plain values, one global, one call.
SAFE_OPCODES = {
    "PROTO",
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "STACK_GLOBAL",
    "MARK",
    "NONE",
    "NEWTRUE",
    "NEWFALSE",
    "TUPLE",
    "REDUCE",
    "STOP",
}

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.binary(max_size=30)
    | st.uuids()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.uuids(), inner, max_size=5)
    ),
    max_leaves=30,
)
pickled_codes = st.sampled_from(sorted(wire.PICKLED_EXT_TYPES))


class Boom:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class EvalBoom:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@given(json_values)
def test_round_trip_of_json_values_and_uuids(value: Any) -> None:
    assert wire.unpackb(wire.packb(value)) == value


@given(st.lists(json_scalars, max_size=5))
def test_tuples_travel_as_lists(items: list[Any]) -> None:
    assert wire.unpackb(wire.packb(tuple(items))) == items


def test_uuid_is_ext_1_with_16_raw_bytes() -> None:
    value = uuid.uuid4()
    assert msgpack.unpackb(wire.packb(value)) == msgpack.ExtType(1, value.bytes)


def test_request_body_shape() -> None:
    body = wire.request_body("i-1", ["k"], {"suppress_events": True})
    assert body == {
        "args": ["k"],
        "kwargs": {"suppress_events": True, "agent_id": "i-1"},
        "metadata": {},
    }


def test_real_agent_image_ref_decodes_to_fields_without_unpickling() -> None:
    ref = wire.unpackb(IMAGE_REF)
    assert ref == wire.ImageRef("stable/python", None, "3.9-ubuntu20.04", "cr.backend.ai")
    assert ref.canonical == "cr.backend.ai/stable/python:3.9-ubuntu20.04"


def test_real_agent_resource_slot_binary_size_and_enum_decode() -> None:
    assert wire.unpackb(RESOURCE_SLOT) == {"cpu": Decimal(2), "mem": Decimal(1073741824)}
    assert wire.unpackb(BINARY_SIZE) == 1024
    assert wire.unpackb(ENUM) == "digest"


def test_our_image_ref_stream_uses_only_safe_opcodes_and_names_the_real_class() -> None:
    ref = wire.ImageRef.from_canonical(
        "cr.backend.ai/stable/python:3.9-ubuntu20.04", "cr.backend.ai"
    )
    ext = wire.image_ref_ext(ref)
    assert ext.code == 7
    ops = [op.name for op, _arg, _pos in pickletools.genops(ext.data)]
    assert set(ops) <= SAFE_OPCODES
    args = [arg for op, arg, _pos in pickletools.genops(ext.data) if op.name.endswith("UNICODE")]
    assert args[:2] == ["ai.backend.common.docker", "ImageRef"]
    assert wire.unpackb(wire.packb({uuid.UUID(int=1): ref})) == {uuid.UUID(int=1): ref}


@given(
    st.text(min_size=1, max_size=20).filter(lambda s: ":" not in s and "/" not in s),
    st.text(min_size=1, max_size=10).filter(lambda s: ":" not in s and "/" not in s),
    st.sampled_from(["x86_64", "aarch64"]),
    st.booleans(),
)
def test_image_ref_round_trip(name: str, tag: str, arch: str, is_local: bool) -> None:
    canonical = f"registry.example/{name}:{tag}"
    ref = wire.ImageRef.from_canonical(
        canonical, "registry.example", architecture=arch, is_local=is_local
    )
    assert ref.canonical == canonical
    assert wire.unpackb(wire.packb(ref)) == ref


def test_decimal_and_datetime_round_trip() -> None:
    moment = datetime.datetime(2026, 5, 1, 12, 30, tzinfo=datetime.UTC)
    value = {"d": Decimal("1.25"), "t": moment, "p": PurePosixPath("/home/work")}
    assert wire.unpackb(wire.packb(value)) == value


@pytest.mark.parametrize("code", sorted(wire.PICKLED_EXT_TYPES))
@pytest.mark.parametrize("evil", [Boom, EvalBoom])
def test_hostile_pickle_in_ext_comes_back_opaque_and_never_runs(
    code: int, evil: type[Boom] | type[EvalBoom], tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(evil(marker), protocol=5)
    body = msgpack.packb({"result": msgpack.ExtType(code, payload)}, use_bin_type=True)
    decoded = wire.unpackb(body)
    assert decoded["result"] == wire.OpaqueExt(code, payload)
    assert not marker.exists()


def test_hostile_global_hidden_inside_an_allowed_container_is_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"cpu": Boom(marker)}, protocol=5)
    with pytest.raises(PickleRejected):
        read_pickle(payload)
    assert wire.unpackb(wire.packb(wire.OpaqueExt(8, payload))) == wire.OpaqueExt(8, payload)
    assert not marker.exists()


def test_self_referencing_pickle_is_rejected_not_looped() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(PickleRejected):
        read_pickle(pickle.dumps(cyclic, protocol=5))


@settings(max_examples=300)
@given(pickled_codes, st.binary(max_size=200))
def test_garbage_inside_pickled_ext_never_raises_anything_but_opaque(
    code: int, data: bytes
) -> None:
    decoded = wire.unpackb(msgpack.packb(msgpack.ExtType(code, data)))
    assert isinstance(
        decoded, wire.OpaqueExt | Decimal | int | str | dict | list | tuple | wire.ImageRef
    )


@given(
    st.integers(min_value=10, max_value=127).filter(lambda c: c not in set(wire.ExtType)),
    st.binary(max_size=50),
)
def test_unknown_ext_types_are_opaque(code: int, data: bytes) -> None:
    assert wire.unpackb(msgpack.packb(msgpack.ExtType(code, data))) == wire.OpaqueExt(code, data)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_garbage_bytes_yield_wire_error_or_a_value(data: bytes) -> None:
    with contextlib.suppress(WireError):
        wire.unpackb(data)


@given(json_values.filter(lambda v: len(wire.packb(v)) > 1))
def test_truncated_messages_are_wire_errors(value: Any) -> None:
    packed = wire.packb(value)
    with pytest.raises(WireError):
        wire.unpackb(packed[:-1])


def test_oversized_message_is_refused_before_decoding() -> None:
    with pytest.raises(WireError, match="exceeds"):
        wire.unpackb(b"\xc0" * (wire.MAX_MESSAGE_BYTES + 1))


def test_huge_declared_collection_is_refused() -> None:
    header = b"\xdd" + (wire.MAX_COLLECTION_LEN + 1).to_bytes(4, "big")
    with pytest.raises(WireError):
        wire.unpackb(header + b"\xc0" * 16)


def test_deep_nesting_is_refused() -> None:
    deep = b"\x91" * (wire.MAX_DEPTH + 5) + b"\xc0"
    with pytest.raises(WireError, match="deeper"):
        wire.unpackb(deep)


def test_uuid_of_wrong_length_is_a_wire_error() -> None:
    with pytest.raises(WireError, match="UUID"):
        wire.unpackb(msgpack.packb(msgpack.ExtType(1, b"short")))


def test_peer_deserializer_returns_undecodable_instead_of_raising() -> None:
    result = wire.peer_deserialize(b"\x92\x01")
    assert isinstance(result, wire.Undecodable)
    assert wire.peer_deserialize(wire.packb([1, "a"])) == [1, "a"]


def test_termination_reasons_become_lifecycle_reasons_an_agent_accepts() -> None:
    """Session reasons map onto Backend.AI lifecycle reasons; nothing invalid is sent."""
    from sokovan.agent.reasons import LIFECYCLE_REASONS, lifecycle_reason

    assert lifecycle_reason("USER_REQUESTED") == "user-requested"
    assert lifecycle_reason("FAILED_TO_START") == "failed-to-start"
    assert lifecycle_reason("ABNORMAL_TERMINATION") == "anomaly-detected"
    assert lifecycle_reason("idle-timeout") == "idle-timeout"
    assert lifecycle_reason("no such reason") == "unknown"
    assert lifecycle_reason(None) == "unknown"
    for reason in ("USER_REQUESTED", "STALE_KERNEL", "CREATION_TIMEOUT", "FORCE_TERMINATED"):
        assert lifecycle_reason(reason) in LIFECYCLE_REASONS
