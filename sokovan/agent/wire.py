"""msgpack codec of the agent RPC, compatible with Backend.AI agents.

Replies are decoded without ever unpickling: ext types that an agent fills with
Python pickles are read by a parser that only recognises a few known constructors
(Decimal, ResourceSlot, BinarySize, SlotName, ImageRef, enum values) and never
imports or calls anything; whatever else comes back as `OpaqueExt`.
"""

from __future__ import annotations

import datetime
import os
import struct
import uuid
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum
from pathlib import PurePosixPath
from typing import Any

import msgpack
import temporenc

from sokovan.agent.safepickle import read_pickle
from sokovan.errors import PickleRejected, WireError

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Every nesting level costs at least one byte, so shorter messages need no depth walk.
MAX_DEPTH = 64
MAX_COLLECTION_LEN = 1_000_000
MAX_EXT_BYTES = 1024 * 1024
IMAGE_REF_MODULE = "ai.backend.common.docker"


class ExtType(IntEnum):
    UUID = 1
    DATETIME = 2
    DECIMAL = 3
    POSIX_PATH = 4
    PURE_POSIX_PATH = 5
    ENUM = 6
    IMAGE_REF = 7
    RESOURCE_SLOT = 8
    SLOT_NAME = 9
    BINARY_SIZE = 16
    AUTO_DIRECTORY_PATH = 17


PICKLED_EXT_TYPES = frozenset(
    {
        ExtType.DECIMAL,
        ExtType.ENUM,
        ExtType.IMAGE_REF,
        ExtType.RESOURCE_SLOT,
        ExtType.SLOT_NAME,
        ExtType.BINARY_SIZE,
    }
)


@dataclass(frozen=True, slots=True)
class OpaqueExt:
    """An ext value we do not decode (pickles above all); kept as raw bytes."""

    code: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What the RPC peer hands back for a reply body that failed to decode."""

    reason: str


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An image reference in the shape of Backend.AI's ImageRef (ext 7)."""

    name: str
    project: str | None
    tag: str
    registry: str
    architecture: str = "x86_64"
    is_local: bool = False

    @property
    def canonical(self) -> str:
        """registry/project/name:tag, as the agent prints it."""
        parts = [p for p in (self.registry, self.project, self.name) if p]
        return f"{'/'.join(parts)}:{self.tag}"

    @classmethod
    def from_canonical(
        cls,
        canonical: str,
        registry: str,
        *,
        architecture: str = "x86_64",
        is_local: bool = False,
    ) -> ImageRef:
        """Splits `registry/path:tag` into a reference with no project."""
        path = canonical
        if registry and canonical.startswith(registry + "/"):
            path = canonical[len(registry) + 1 :]
        elif "/" in canonical:
            registry, path = canonical.split("/", 1)
        name, sep, tag = path.rpartition(":")
        if not sep or "/" in tag:
            name, tag = path, "latest"
        return cls(name, None, tag, registry, architecture, is_local)


def _pickle_text(text: str) -> bytes:
    raw = text.encode()
    if len(raw) < 256:
        return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _pickle_plain(value: str | bool | None) -> bytes:
    if value is None:
        return b"N"
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"
    return _pickle_text(value)


def _pickle_call(module: str, name: str, args: tuple[str | bool | None, ...]) -> bytes:
    """A pickle stream that calls module.name(*args) with plain arguments, built by hand."""
    body = b"".join(_pickle_plain(a) for a in args)
    # PROTO 4, STACK_GLOBAL, MARK args TUPLE, REDUCE, STOP
    return b"\x80\x04" + _pickle_text(module) + _pickle_text(name) + b"\x93(" + body + b"tR."


def image_ref_ext(ref: ImageRef) -> msgpack.ExtType:
    """ext 7 the way a real agent reads it: its ImageRef built from positional fields."""
    fields = (ref.name, ref.project, ref.tag, ref.registry, ref.architecture, ref.is_local)
    return msgpack.ExtType(ExtType.IMAGE_REF, _pickle_call(IMAGE_REF_MODULE, "ImageRef", fields))


def _default(obj: object) -> Any:
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(ExtType.UUID, obj.bytes)
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, OpaqueExt):
        return msgpack.ExtType(obj.code, obj.data)
    if isinstance(obj, ImageRef):
        return image_ref_ext(obj)
    if isinstance(obj, Decimal):
        return msgpack.ExtType(ExtType.DECIMAL, _pickle_call("decimal", "Decimal", (str(obj),)))
    if isinstance(obj, datetime.datetime):
        return msgpack.ExtType(ExtType.DATETIME, temporenc.packb(obj))
    if isinstance(obj, PurePosixPath):
        return msgpack.ExtType(ExtType.PURE_POSIX_PATH, os.fsencode(obj))
    raise TypeError(f"cannot encode {type(obj).__name__} for the agent RPC")


def _decode_datetime(data: bytes) -> Any:
    try:
        moment = temporenc.unpackb(data).datetime()
    except Exception:
        return OpaqueExt(ExtType.DATETIME, data)
    return moment if isinstance(moment, datetime.datetime) else OpaqueExt(ExtType.DATETIME, data)


def _decode_pickled(code: int, data: bytes) -> Any:
    try:
        value = read_pickle(data)
    except PickleRejected:
        return OpaqueExt(code, data)
    if isinstance(value, dict) and value.get("__image_ref__"):
        fields = {k: v for k, v in value.items() if k != "__image_ref__"}
        try:
            return ImageRef(**fields)
        except TypeError:
            return OpaqueExt(code, data)
    return value


def _ext_hook(code: int, data: bytes) -> Any:
    raw = bytes(data)
    if code == ExtType.UUID:
        if len(raw) != 16:
            raise WireError(f"UUID ext value has {len(raw)} bytes, expected 16")
        return uuid.UUID(bytes=raw)
    if code == ExtType.DATETIME:
        return _decode_datetime(raw)
    if code in (ExtType.POSIX_PATH, ExtType.PURE_POSIX_PATH, ExtType.AUTO_DIRECTORY_PATH):
        return PurePosixPath(os.fsdecode(raw))
    if code in PICKLED_EXT_TYPES:
        return _decode_pickled(code, raw)
    return OpaqueExt(code, raw)


def packb(obj: Any) -> bytes:
    """Encodes a request or reply body."""
    return msgpack.packb(obj, default=_default, use_bin_type=True)  # type: ignore[no-any-return]


def _check_depth(value: Any) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise WireError(f"message nests deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
            stack.extend((k, depth + 1) for k in item if isinstance(k, tuple))
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)


def unpackb(data: bytes) -> Any:
    """Decodes a body; raises WireError on anything malformed or oversized."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        value = msgpack.unpackb(
            data,
            ext_hook=_ext_hook,
            raw=False,
            strict_map_key=False,
            use_list=True,
            max_array_len=MAX_COLLECTION_LEN,
            max_map_len=MAX_COLLECTION_LEN,
            max_ext_len=MAX_EXT_BYTES,
        )
    except WireError:
        raise
    except Exception as e:
        raise WireError(f"undecodable message: {type(e).__name__}: {e}") from e
    if len(data) > MAX_DEPTH:
        _check_depth(value)
    return value


def peer_deserialize(data: bytes) -> Any:
    """Like unpackb, but returns Undecodable instead of raising.

    The RPC peer decodes replies in its receive loop, where an exception would stop
    the loop and leave every pending call hanging; the caller raises instead.
    """
    try:
        return unpackb(data)
    except WireError as e:
        return Undecodable(str(e))
    except Exception as e:  # not bytes at all, or a decoder bug: still never out of the loop
        return Undecodable(f"undecodable message: {type(e).__name__}: {e}")


def request_body(
    agent_id: str, args: list[Any], kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The body a Backend.AI agent expects: args, kwargs with agent_id, metadata."""
    return {"args": args, "kwargs": {**(kwargs or {}), "agent_id": agent_id}, "metadata": {}}
