"""Delivery counts per task message, and the dead-letter list of messages that never finish."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from redis.asyncio import Redis

from sokovan import constants as C
from sokovan.types import ItemOutcome

log = logging.getLogger(__name__)

# The list keeps the newest this many: enough to see a pattern, bounded if one repeats.
DEADLETTER_MAX_ENTRIES: Final = 1000
# Arguments up to this size (JSON) are kept so the message can be resent; larger are not.
DEADLETTER_MAX_MESSAGE_BYTES: Final = 1 << 20

# Counts one more delivery and keeps the counter alive past any redelivery; also says
# whether a delivery of this task id already finished (a duplicate message).
_COUNT = """
local n = redis.call('incr', KEYS[1])
redis.call('expire', KEYS[1], tonumber(ARGV[1]))
return {n, redis.call('exists', KEYS[2])}
"""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One start of a task message, as counted."""

    count: int  # starts of this task id that did not finish, this one included
    duplicate: bool  # another delivery of the same task id already finished


def delivery_key(task_id: str) -> str:
    return f"{C.DELIVERY_KEY_PREFIX}{task_id}"


def finished_key(task_id: str) -> str:
    return f"{C.DELIVERY_KEY_PREFIX}{task_id}:finished"


def bounded_repr(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """The arguments for a person to read, cut to a fixed length."""
    text = f"args={args!r} kwargs={kwargs!r}"
    limit = C.DEADLETTER_ARGS_REPR_CHARS
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message taken out of circulation, with what is needed to read or resend it."""

    task_id: str
    task_name: str
    reason: str
    deliveries: int
    at: float
    args_repr: str
    run_id: int | None = None
    # The original arguments, kept when small enough to resend; None when too large.
    message: dict[str, Any] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "task_name": self.task_name,
            "reason": self.reason,
            "deliveries": self.deliveries,
            "at": self.at,
            "args_repr": self.args_repr,
            "run_id": self.run_id,
            "message": self.message,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeadLetter:
        return cls(
            task_id=str(data["task_id"]),
            task_name=str(data["task_name"]),
            reason=str(data.get("reason", "")),
            deliveries=int(data.get("deliveries", 0)),
            at=float(data.get("at", 0.0)),
            args_repr=str(data.get("args_repr", "")),
            run_id=None if data.get("run_id") is None else int(data["run_id"]),
            message=data.get("message"),
        )


def make_dead_letter(
    task_id: str,
    task_name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    deliveries: int,
    reason: str,
    run_id: int | None = None,
) -> DeadLetter:
    """A dead letter; the arguments are kept for a resend only below a size bound."""
    message: dict[str, Any] | None = {"args": list(args), "kwargs": dict(kwargs)}
    try:
        size = len(json.dumps(message))
    except (TypeError, ValueError):
        size = DEADLETTER_MAX_MESSAGE_BYTES + 1
    if size > DEADLETTER_MAX_MESSAGE_BYTES:
        message = None
    return DeadLetter(
        task_id=task_id,
        task_name=task_name,
        reason=reason,
        deliveries=deliveries,
        at=time.time(),
        args_repr=bounded_repr(args, kwargs),
        run_id=run_id,
        message=message,
    )


class DeadLetters:
    """Delivery counters and the dead-letter list, in Redis."""

    def __init__(self, redis: Redis, counter_ttl: int = C.DELIVERY_COUNT_TTL_SEC) -> None:
        self._redis = redis
        self._ttl = counter_ttl

    async def count_delivery(self, task_id: str) -> Delivery:
        """Counts one delivery of a message."""
        keys = (delivery_key(task_id), finished_key(task_id))
        n, done = await self._redis.eval(_COUNT, 2, *keys, str(self._ttl))
        return Delivery(int(n), bool(done))

    async def finished(self, task_id: str) -> None:
        """Forgets a message's count once its task finished, and notes that it did."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(delivery_key(task_id))
            pipe.set(finished_key(task_id), "1", ex=self._ttl)
            await pipe.execute()

    async def add(self, letter: DeadLetter) -> None:
        """Puts a message on the list, newest first; the oldest fall off past the bound."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(C.DEADLETTER_KEY, json.dumps(letter.to_json()))
            pipe.ltrim(C.DEADLETTER_KEY, 0, DEADLETTER_MAX_ENTRIES - 1)
            pipe.delete(delivery_key(letter.task_id))
            await pipe.execute()

    async def list(self) -> list[DeadLetter]:
        """Every dead letter, newest first; unreadable entries are skipped with a warning."""
        out: list[DeadLetter] = []
        for raw in await self._redis.lrange(C.DEADLETTER_KEY, 0, -1):
            try:
                out.append(DeadLetter.from_json(json.loads(raw)))
            except (KeyError, TypeError, ValueError) as e:
                log.warning("unreadable dead-letter entry skipped: %s", e)
        return out

    async def take(self, task_id: str) -> DeadLetter | None:
        """Removes and returns the dead letter of a task id, if any."""
        for raw in await self._redis.lrange(C.DEADLETTER_KEY, 0, -1):
            try:
                letter = DeadLetter.from_json(json.loads(raw))
            except (KeyError, TypeError, ValueError):
                continue
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            if letter.task_id == task_id and await self._redis.lrem(C.DEADLETTER_KEY, 1, text):
                return letter
        return None


def failed_outcomes(agent_id: str, items: Sequence[Any], error: str) -> list[ItemOutcome]:
    """One failed outcome per kernel named in an agent batch that will not run."""
    out: list[ItemOutcome] = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        # A pull item carries its waiting kernels; create and destroy items are one kernel.
        for kernel in item.get("kernels") or [item]:
            if isinstance(kernel, Mapping) and kernel.get("kernel_id"):
                detail = {"session_id": str(kernel.get("session_id", ""))}
                kid = str(kernel["kernel_id"])
                out.append(ItemOutcome(kid, agent_id, ok=False, error=error, detail=detail))
    return out or [ItemOutcome(f"payload:{agent_id}", agent_id, False, error)]
