"""Checks a reply frame's callosum envelope before callosum's receive loop decodes it.

Callosum decodes every frame in one receive loop per connection and stops that loop on the
first exception, so one malformed frame would leave every later call waiting forever.
`frame_problem` decodes header and envelope exactly as callosum does, with tighter limits,
and says what is wrong, so the frame never reaches callosum; `reply_key` says which call a
bad frame claims to answer, so that call alone can fail.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack
from callosum.abc import RawHeaderBody
from callosum.rpc.message import RPCMessageTypes

from sokovan import constants as C
from sokovan.agent.wire import MAX_MESSAGE_BYTES
from sokovan.text import bounded_text

# A client is sent replies only: a FUNCTION or CANCEL frame would ask us to serve something.
REPLY_TYPES = frozenset(
    {
        RPCMessageTypes.RESULT,
        RPCMessageTypes.FAILURE,
        RPCMessageTypes.ERROR,
        RPCMessageTypes.CANCELLED,
    }
)
ERROR_TYPES = frozenset({RPCMessageTypes.FAILURE, RPCMessageTypes.ERROR})
MAX_HEADER_BYTES = 4096
# Method names and order keys are echoes of what we sent: short.
MAX_NAME_LEN = 256
HEADER_FIELDS = ("type", "zip", "meth", "okey", "seq")
ERROR_META_FIELDS = 3  # name, repr, traceback


class FrameRejected(Exception):
    """Internal: what is wrong with a frame."""


def _decode(data: Any, what: str, limit: int) -> Any:
    """As callosum's munpackb decodes (tuples, str keys only), bounded."""
    if not isinstance(data, bytes):
        raise FrameRejected(f"{what} is {type(data).__name__}, not bytes")
    if len(data) > limit:
        raise FrameRejected(f"{what} of {len(data)} bytes exceeds {limit}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            max_array_len=limit,
            max_map_len=limit,
        )
    except Exception as e:  # msgpack raises several types; all mean "not decodable"
        raise FrameRejected(f"{what} is undecodable: {type(e).__name__}: {e}") from e


def _check_header(header: Any) -> RPCMessageTypes:
    if not isinstance(header, Mapping):
        raise FrameRejected(f"header is {type(header).__name__}, not a map")
    missing = [name for name in HEADER_FIELDS if name not in header]
    if missing:
        raise FrameRejected(f"header lacks {', '.join(missing)}")
    kind = header["type"]
    if isinstance(kind, bool) or not isinstance(kind, int) or kind not in REPLY_TYPES:
        raise FrameRejected(f"header type {kind!r} is not a reply type the wire knows")
    if header["zip"] is not False:
        raise FrameRejected(f"header zip is {header['zip']!r}: compressed replies are not used")
    if not isinstance(header["meth"], str) or len(header["meth"]) > MAX_NAME_LEN:
        raise FrameRejected("header meth is not a method name")
    okey = header["okey"]
    if not isinstance(okey, str | bytes) or len(okey) > MAX_NAME_LEN:
        raise FrameRejected("header okey is not an order key")
    seq = header["seq"]
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise FrameRejected(f"header seq is {type(seq).__name__}, not an int")
    return RPCMessageTypes(kind)


def _check_meta(kind: RPCMessageTypes, meta: Any) -> None:
    if not meta:
        if kind in ERROR_TYPES:
            raise FrameRejected(f"a {kind.name} frame carries no error metadata")
        return
    fields = _decode(meta, "metadata", MAX_MESSAGE_BYTES)
    if not isinstance(fields, tuple):
        raise FrameRejected(f"metadata is {type(fields).__name__}, not an array")
    if kind in ERROR_TYPES:
        if len(fields) != ERROR_META_FIELDS or not all(isinstance(f, str) for f in fields):
            raise FrameRejected("error metadata is not (name, repr, traceback) strings")
    elif fields:
        raise FrameRejected(f"a {kind.name} frame carries {len(fields)} metadata fields, not 0")


def _check_data(kind: RPCMessageTypes, data: Any) -> None:
    if not isinstance(data, Mapping) or "meta" not in data or "body" not in data:
        raise FrameRejected("envelope is not a map of meta and body")
    _check_meta(kind, data["meta"])
    if kind is RPCMessageTypes.RESULT and not isinstance(data["body"], bytes):
        raise FrameRejected(f"result body is {type(data['body']).__name__}, not bytes")


def reply_key(frame: RawHeaderBody) -> tuple[str, int] | None:
    """(method, sequence number) of the call a frame answers, if its header says so."""
    try:
        header = _decode(frame.header, "header", MAX_HEADER_BYTES)
    except FrameRejected:
        return None
    if not isinstance(header, Mapping):
        return None
    method, seq = header.get("meth"), header.get("seq")
    if isinstance(method, str) and isinstance(seq, int) and not isinstance(seq, bool):
        return method, seq
    return None


def frame_problem(frame: RawHeaderBody) -> str | None:
    """None if callosum can decode this reply frame safely; else what is wrong with it."""
    try:
        kind = _check_header(_decode(frame.header, "header", MAX_HEADER_BYTES))
        _check_data(kind, _decode(frame.body, "envelope", MAX_MESSAGE_BYTES))
    except FrameRejected as e:
        return bounded_text(str(e), C.REPLY_SAMPLE_MAX_BYTES)
    return None
