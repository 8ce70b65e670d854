"""The one shape of a refused public request: {"error", "kind", "field"}."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from sokovan.constants import SECRET_FIELD_NAMES
from sokovan.errors import SokovanError
from sokovan.redaction import is_secret_name

log = logging.getLogger(__name__)

# Characters of an offending value echoed in a refusal: enough to recognise it, never a payload.
REFUSAL_ECHO_CHARS: Final = 40

# The kind of a refusal whose input broke the payload schema (the CLI exits 2 for it).
INVALID: Final = "InvalidRequest"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request refused before anything was created; returned, never raised."""

    error: str
    kind: str = INVALID
    field: str | None = None

    @property
    def invalid_input(self) -> bool:
        """True when the input itself is malformed, False when the state refused it."""
        return self.kind == INVALID

    def to_json(self) -> dict[str, Any]:
        return {"error": self.error, "kind": self.kind, "field": self.field}


def echo(value: Any) -> str:
    """A short, safe rendering of an offending value: never more than a prefix of it."""
    limit = REFUSAL_ECHO_CHARS
    if isinstance(value, str):
        text = repr(value[:limit])
        return text if len(value) <= limit else f"{text}... ({len(value)} chars)"
    if isinstance(value, list | tuple | dict | set | frozenset):
        # Never repr a container: it may hold a hundred thousand items.
        return f"a {type(value).__name__} of {len(value)} item(s)"
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"  # repr of a huge int is costly
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def field_path(loc: Sequence[int | str]) -> str | None:
    """`("resource_slots", "cpu")` -> `"resource_slots.cpu"`; list indexes as `agents[3]`."""
    out = ""
    for part in loc:
        if part == "[key]":
            continue  # pydantic's marker of a mapping key: the key is already in the path
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part[:REFUSAL_ECHO_CHARS]
            if not text.isprintable():
                text = repr(text)[1:-1]  # a key with NUL or newlines stays one readable line
            out += f".{text}" if out else text
    return out or None


def from_validation(e: ValidationError) -> Refusal:
    """The first schema error of a payload, naming its field and echoing a prefix of the value."""
    first = e.errors(include_url=False, include_context=True)[0]
    loc = tuple(first.get("loc", ()))
    ctx = first.get("ctx") or {}
    # Cross-field checks name their field in the context (their location is the model).
    field = str(ctx["field"]) if "field" in ctx else field_path(loc)
    message = str(first.get("msg", "invalid value"))
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        message = "unknown field"
    elif kind == "missing":
        message = "required"
    elif "field" not in ctx and _shows_value(loc):
        message = f"{message} (got {echo(first.get('input'))})"
    return Refusal(f"{field}: {message}" if field else message, INVALID, field)


def _shows_value(loc: Sequence[int | str]) -> bool:
    """False for a secret's value (an environ name like API_TOKEN, a declared field)."""
    names = [str(part) for part in loc if isinstance(part, str)]
    return not any(n in SECRET_FIELD_NAMES or is_secret_name(n) for n in names)


def from_error(e: SokovanError, field: str | None = None) -> Refusal:
    """A refusal for an error the domain raised about a well-formed request."""
    text = str(e)
    if len(text) > 4 * REFUSAL_ECHO_CHARS:
        text = text[: 4 * REFUSAL_ECHO_CHARS] + "..."
    return Refusal(text, type(e).__name__, field)


def refusal_answer(task: str, refusal: Refusal) -> dict[str, Any]:
    """The refusal as a task answers it, logged on one line (a prefix of the input at most)."""
    log.warning("%s refused: %s", task, refusal.error)
    return refusal.to_json()
