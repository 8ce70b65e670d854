"""Parsing of CLI words into request values; bad input raises BadInput naming the option."""

from __future__ import annotations

import uuid
from decimal import Decimal, InvalidOperation

from sokovan.agentd.specs import parse_size
from sokovan.errors import ConfigError
from sokovan.types import SessionId
from tasks.cli.errors import BadInput


def parse_session_id(text: str) -> SessionId:
    """A session id argument, or exit 2 naming it."""
    try:
        return SessionId(uuid.UUID(text))
    except ValueError:
        raise BadInput(f"SESSION_ID {text!r} is not a session id (a UUID)") from None


def parse_pairs(option: str, values: list[str] | None) -> dict[str, str]:
    """`NAME=VALUE` words of a repeatable option; anything else is bad input naming it."""
    out: dict[str, str] = {}
    for word in values or []:
        name, sep, value = word.partition("=")
        if not sep or not name.strip():
            raise BadInput(f"{option} {word!r}: expected NAME=VALUE")
        out[name.strip()] = value
    return out


def parse_slots(values: list[str] | None) -> dict[str, str] | None:
    """`--slot cpu=2 --slot mem=4g` -> resource slots with mem in bytes."""
    slots = parse_pairs("--slot", values)
    for name, value in slots.items():
        try:
            slots[name] = parse_size(value) if name == "mem" else str(Decimal(value))
        except (ConfigError, InvalidOperation):
            raise BadInput(f"--slot {name}={value!r}: expected a number (mem: 4g, 512m)") from None
    return slots or None
