"""Why a session failed to start, in the shape Backend.AI keeps in status_data["error"]."""

from __future__ import annotations

from sokovan import constants as C
from sokovan.errors import AgentError, AgentRemoteError
from sokovan.text import bounded_text
from sokovan.types import JSON


def _bounded(text: str) -> str:
    return bounded_text(text, C.STORED_ERROR_MAX_BYTES)


def error_info_of(exc: BaseException, src: str | None = None) -> JSON:
    """{"src", "name", "repr", "message"} of an exception; groups list theirs in "collection"."""
    if isinstance(exc, BaseExceptionGroup):
        return {
            "src": src or "other",
            "name": type(exc).__name__,
            "repr": f"{type(exc).__name__}({len(exc.exceptions)})",
            "message": _bounded(str(exc)),
            "collection": [error_info_of(e, src) for e in exc.exceptions],
        }
    if isinstance(exc, AgentRemoteError):
        return {
            "src": "agent",
            "name": exc.name or type(exc).__name__,
            "repr": _bounded(f"{exc.name or type(exc).__name__}({exc.message!r})"),
            "message": exc.message,
        }
    return {
        "src": "agent" if isinstance(exc, AgentError) else (src or "other"),
        "name": type(exc).__name__,
        "repr": _bounded(repr(exc)),
        "message": _bounded(str(exc)),
    }
