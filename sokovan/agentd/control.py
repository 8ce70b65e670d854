"""Fault operations through Redis: queued per agent id, acknowledged once applied."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from sokovan import constants as C
from sokovan.errors import AgentdError


def control_key(agent_id: str) -> str:
    """The list of fault operations waiting for one agent."""
    return f"{C.AGENT_CONTROL_PREFIX}{agent_id}"


def ack_key(agent_id: str, token: str) -> str:
    """Where an agent acknowledges one operation it applied."""
    return f"{C.AGENT_CONTROL_PREFIX}{agent_id}:ack:{token}"


def decode_op(raw: bytes | str) -> dict[str, Any]:
    """One queued operation; raises AgentdError when it is not a JSON object."""
    try:
        op = json.loads(raw)
    except ValueError as e:
        raise AgentdError(f"fault operation is not JSON: {raw!r}") from e
    if not isinstance(op, dict):
        raise AgentdError(f"fault operation is not an object: {raw!r}")
    return op


async def send_fault(
    redis: Redis, agent_id: str, op: Mapping[str, Any], wait: float | None = 10.0
) -> None:
    """Queues `op` for `agent_id`; with `wait`, returns once the agent applied it.

    Raises AgentdError if the agent refused the operation, TimeoutError if it did not
    take it within `wait` seconds (is it running?).
    """
    token = uuid.uuid4().hex
    await redis.rpush(control_key(agent_id), json.dumps({**op, "token": token}))
    if wait is None:
        return
    async with asyncio.timeout(wait):
        # The acknowledgement lives in Redis: there is no local event to wait on.
        while (raw := await redis.getdel(ack_key(agent_id, token))) is None:  # noqa: ASYNC110
            await asyncio.sleep(C.AGENT_CONTROL_POLL_SEC / 2)
    error = json.loads(raw).get("error")
    if error:
        raise AgentdError(f"agent {agent_id} refused {dict(op)}: {error}")
