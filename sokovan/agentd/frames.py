"""Hostile reply frames of the reference agent, for proving the client survives them.

A `frame` fault makes a call's reply go out as one of these instead of the honest frame;
each keeps the honest header's method and sequence number where it can, so the frame is
taken for the reply to that very call.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from enum import StrEnum
from typing import Any

import msgpack
from callosum.abc import RawHeaderBody
from callosum.lower import AbstractConnection
from callosum.rpc.message import RPCMessageTypes

from sokovan.agent.wire import ExtType

DEEP = 100_000  # nesting levels of the deep frames: far past any decoder's stack
# A pickle that would run a shell command if anyone unpickled it.
EVIL_PICKLE = b"cos\nsystem\n(S'echo pwned > /tmp/sokovan-pwned'\ntR."


class FrameKind(StrEnum):
    """What is wrong with a hostile reply frame."""

    HEADER_TYPE = "header_type"  # a message type the wire does not know
    HEADER_FUNCTION = "header_function"  # the agent "calls" a method on the manager
    HEADER_GARBAGE = "header_garbage"  # header bytes that are not msgpack
    HEADER_DEEP = "header_deep"  # header nested 100k deep
    HEADER_COMPRESSED = "header_compressed"  # claims snappy compression
    ENVELOPE_DEEP = "envelope_deep"  # the {meta, body} wrapper nested 100k deep
    BAD_META = "bad_meta"  # an error reply whose metadata is not (name, repr, traceback)
    CANCELLED = "cancelled"  # a well-formed CANCELLED reply: the agent "cancels" our call
    BODY_NOT_BYTES = "body_not_bytes"  # a result body that is an int, not encoded bytes
    BODY_GARBAGE = "body_garbage"  # a result body that is not msgpack
    BODY_DEEP = "body_deep"  # a result body nested 100k deep
    BODY_PICKLE = "body_pickle"  # a result that is a pickle ext type (ext 6) with a payload


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def _deep(levels: int = DEEP) -> bytes:
    return b"\x91" * levels + b"\xc0"  # [[[...[nil]...]]]


def hostile_frame(kind: FrameKind, honest: RawHeaderBody) -> RawHeaderBody:
    """The frame to send instead of `honest` (a RESULT of ours)."""
    header: dict[str, Any] = msgpack.unpackb(honest.header, raw=False)
    data: dict[str, Any] = msgpack.unpackb(honest.body, raw=False)
    if kind is FrameKind.HEADER_TYPE:
        raw_header, raw_data = _pack({**header, "type": 99}), honest.body
    elif kind is FrameKind.HEADER_FUNCTION:
        function = {**header, "type": int(RPCMessageTypes.FUNCTION), "meth": "no_such_method"}
        raw_header, raw_data = _pack(function), honest.body
    elif kind is FrameKind.HEADER_GARBAGE:
        raw_header, raw_data = b"\xc1\xc1 not msgpack", honest.body
    elif kind is FrameKind.HEADER_DEEP:
        raw_header, raw_data = _deep(), honest.body
    elif kind is FrameKind.HEADER_COMPRESSED:
        raw_header, raw_data = _pack({**header, "zip": True}), honest.body
    elif kind is FrameKind.ENVELOPE_DEEP:
        raw_header, raw_data = honest.header, _deep()
    elif kind is FrameKind.CANCELLED:
        cancelled = {**header, "type": int(RPCMessageTypes.CANCELLED)}
        raw_header, raw_data = _pack(cancelled), _pack({"meta": _pack([]), "body": None})
    elif kind is FrameKind.BAD_META:
        failure = {**header, "type": int(RPCMessageTypes.FAILURE)}
        raw_header, raw_data = _pack(failure), _pack({"meta": _pack([1]), "body": None})
    else:
        raw_header, raw_data = honest.header, _pack({**data, "body": _body(kind)})
    return RawHeaderBody(raw_header, raw_data, honest.peer_id)


def _body(kind: FrameKind) -> Any:
    if kind is FrameKind.BODY_NOT_BYTES:
        return 12345
    if kind is FrameKind.BODY_GARBAGE:
        return b"\xc1\xc1 not msgpack"
    if kind is FrameKind.BODY_DEEP:
        return _deep()
    return _pack(msgpack.ExtType(ExtType.ENUM, EVIL_PICKLE))


RequestKey = tuple[Any, str, Any, int]  # peer id, method, order key, sequence number


class HostileFrames:
    """Replies due to go out hostile, by request; filled by the dispatcher."""

    def __init__(self) -> None:
        self.pending: dict[RequestKey, FrameKind] = {}

    def mark(self, key: RequestKey, kind: FrameKind) -> None:
        """The reply to this request goes out as a `kind` frame."""
        self.pending[key] = kind

    def rewrite(self, frame: RawHeaderBody) -> RawHeaderBody:
        """`frame`, or its hostile version if its request was marked."""
        if not self.pending:
            return frame
        header = msgpack.unpackb(frame.header, raw=False)
        key = (frame.peer_id, header["meth"], header["okey"], header["seq"])
        kind = self.pending.pop(key, None)
        return frame if kind is None else hostile_frame(kind, frame)


class HostileConnection(AbstractConnection):
    """Wraps the agent's connection so marked replies go out hostile."""

    def __init__(self, inner: AbstractConnection, frames: HostileFrames) -> None:
        self.inner = inner
        self.frames = frames

    def recv_message(self) -> AsyncGenerator[RawHeaderBody | None, None]:
        recv: Callable[[], AsyncGenerator[RawHeaderBody | None, None]] = self.inner.recv_message
        return recv()

    async def send_message(self, raw_msg: RawHeaderBody) -> None:
        await self.inner.send_message(self.frames.rewrite(raw_msg))
