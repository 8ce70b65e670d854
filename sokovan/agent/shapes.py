"""What each agent method must reply, checked before a reply reaches the scheduler.

A wrong shape fails the call with a ReplyShapeError naming the method and the shape it
should have had, instead of an AttributeError or TypeError somewhere downstream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sokovan import constants as C
from sokovan.errors import ReplyShapeError
from sokovan.text import bounded_text

MAX_PORT = 65535

Check = Callable[[Any], str | None]  # None when the reply fits, else what is wrong with it


def sample(value: Any) -> str:
    """A short, bounded description of a value for an error message."""
    return f"{type(value).__name__} {bounded_text(repr(value), C.REPLY_SAMPLE_MAX_BYTES)}"


def _image_statuses(reply: Any) -> str | None:
    if not isinstance(reply, Mapping):
        return sample(reply)
    for key, value in reply.items():
        if not isinstance(key, str):
            return f"a mapping with the key {sample(key)}"
        if not isinstance(value, str):
            return f"a mapping whose value for {bounded_text(key, 200)!r} is {sample(value)}"
    return None


def _bool_or_none(reply: Any) -> str | None:
    return None if reply is None or isinstance(reply, bool) else sample(reply)


def _list_of_mappings(reply: Any) -> str | None:
    if not isinstance(reply, list):
        return sample(reply)
    for index, item in enumerate(reply):
        if not isinstance(item, Mapping):
            return f"a list whose item {index} is {sample(item)}"
    return None


def _port(reply: Any) -> str | None:
    # bool is an int to Python, never a port to an agent.
    if isinstance(reply, int) and not isinstance(reply, bool) and 1 <= reply <= MAX_PORT:
        return None
    return sample(reply)


def _nothing(reply: Any) -> str | None:
    # A real agent's destroy_kernel resolves its wait with None on every path that succeeds
    # (Backend.AI agent 26.9: the kernel destroyed, or already gone); anything else is not a
    # destroy reply, and counting it as one would call a kernel destroyed on a stranger's word.
    return None if reply is None else sample(reply)


def _logs(reply: Any) -> str | None:
    if not isinstance(reply, Mapping):
        return sample(reply)
    if not isinstance(reply.get("logs"), str):
        return f"a mapping whose logs is {sample(reply.get('logs'))}"
    return None


# method -> (the shape in words, its check); methods not listed are taken as they come.
SHAPES: dict[str, tuple[str, Check]] = {
    "check_and_pull": ("a mapping of image name (str) to status (str)", _image_statuses),
    "check_running": ("a bool or None", _bool_or_none),
    "create_kernels": ("a list of mappings, one per kernel", _list_of_mappings),
    "destroy_kernel": ("None", _nothing),
    "assign_port": (f"an int port in 1..{MAX_PORT}", _port),
    "get_logs": ('a mapping {"logs": str}', _logs),
}


def check_reply(agent_id: str, method: str, reply: Any) -> Any:
    """Returns `reply` if it has the shape of `method`'s reply; raises ReplyShapeError if not."""
    shape = SHAPES.get(method)
    if shape is None:
        return reply
    expected, check = shape
    wrong = check(reply)
    if wrong is None:
        return reply
    raise ReplyShapeError(
        f"agent {agent_id}: {method} replied {wrong}, expected {expected}", method, expected
    )
