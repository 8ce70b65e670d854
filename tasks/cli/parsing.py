"""CLI words into request values. The tasks' own schemas judge the values (one message for
the CLI and the task alike); here only what the schema cannot see is refused: a word that is
not NAME=VALUE, a session id that is not one."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from sokovan.admission.parse import parse_terminate
from sokovan.admission.refusal import Refusal
from sokovan.agentd.specs import parse_size
from sokovan.errors import ConfigError
from sokovan.types import AgentLiveness, SessionId
from tasks.cli.errors import BadInput


def parse_pairs(field: str, values: list[str] | None) -> dict[str, str]:
    """`NAME=VALUE` words of a repeatable option, for the request field `field`."""
    out: dict[str, str] = {}
    for word in values or []:
        name, sep, value = word.partition("=")
        if not sep:
            raise BadInput(f"{field}: {word[:40]!r} is not NAME=VALUE")
        out[name] = value
    return out


def parse_slots(values: list[str] | None) -> dict[str, str] | None:
    """`--slot cpu=2 --slot mem=4g`: memory may carry a unit, as `agent run --mem 32g` does."""
    slots = parse_pairs("resource_slots", values)
    mem = slots.get("mem")
    if mem and mem.strip()[-1:].lower() in ("k", "m", "g", "t", "b"):
        with contextlib.suppress(ConfigError):  # left as given: the schema refuses it
            slots["mem"] = parse_size(mem)
    return slots or None


def terminate_kwargs(session_id: str, reason: str, force: bool) -> dict[str, Any]:
    """The terminate task's keyword arguments, refused here as the task would refuse them."""
    kwargs: dict[str, Any] = {"session_id": session_id, "reason": reason, "force": force}
    parsed = parse_terminate((), kwargs)
    if isinstance(parsed, Refusal):
        raise BadInput(parsed.error)
    return kwargs


def session_id_of(text: str) -> SessionId:
    """A session id argument (already checked by the schema, or refused here)."""
    try:
        return SessionId(uuid.UUID(text))
    except ValueError:
        raise BadInput(f"session_id: {text[:40]!r} is not a session id") from None


def agent_status(value: str | None) -> str | None:
    """`agents list --status`: a known agent status in any case, else a refusal (exit 2)."""
    if value is None:
        return None
    known = [str(s) for s in AgentLiveness]
    if value.upper() not in known:
        raise BadInput(f"--status {value[:40]!r}: expected one of {', '.join(known)}")
    return value.upper()
