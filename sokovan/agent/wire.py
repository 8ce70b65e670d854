"""msgpack codec of the agent RPC, compatible with Backend.AI agents.

Replies are decoded without ever unpickling: ext types that an agent fills with
Python pickles come back as `OpaqueExt`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from sokovan.errors import WireError

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ExtType(IntEnum):
    UUID = 1
    DATETIME = 2
    DECIMAL = 3
    POSIX_PATH = 4
    PURE_POSIX_PATH = 5
    ENUM = 6
    IMAGE_REF = 7
    RESOURCE_SLOT = 8
    BINARY_SIZE = 16


@dataclass(frozen=True, slots=True)
class OpaqueExt:
    """An ext value we do not decode (pickles above all); kept as raw bytes."""

    code: int
    data: bytes


def _default(obj: object) -> Any:
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(ExtType.UUID, obj.bytes)
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, OpaqueExt):
        return msgpack.ExtType(obj.code, obj.data)
    raise TypeError(f"cannot encode {type(obj).__name__} for the agent RPC")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == ExtType.UUID:
        if len(data) != 16:
            raise WireError(f"UUID ext value has {len(data)} bytes, expected 16")
        return uuid.UUID(bytes=data)
    return OpaqueExt(code, bytes(data))


def packb(obj: Any) -> bytes:
    """Encodes a request or reply body."""
    return msgpack.packb(obj, default=_default, use_bin_type=True)  # type: ignore[no-any-return]


def unpackb(data: bytes) -> Any:
    """Decodes a body; raises WireError on anything malformed or oversized."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return msgpack.unpackb(
            data,
            ext_hook=_ext_hook,
            raw=False,
            strict_map_key=False,
            use_list=True,
        )
    except WireError:
        raise
    except Exception as e:
        raise WireError(f"undecodable message: {type(e).__name__}: {e}") from e


def request_body(agent_id: str, args: list[Any], kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body a Backend.AI agent expects: args, kwargs with agent_id, metadata."""
    return {"args": args, "kwargs": {**(kwargs or {}), "agent_id": agent_id}, "metadata": {}}
