"""Bounding text that comes from outside (agents) before it is stored or logged."""

from __future__ import annotations

from typing import Final

# Text an agent sends (error names, messages, answers) is cut to this many UTF-8 bytes before
# it is stored or logged: enough for any real error, and one hostile agent cannot fill rows.
AGENT_TEXT_MAX_BYTES: Final = 2048

# A character takes at most four UTF-8 bytes: shorter strings need no encoding to be measured.
_MAX_UTF8_BYTES_PER_CHAR = 4


def bounded_text(text: str, limit: int = AGENT_TEXT_MAX_BYTES) -> str:
    """`text` cut to `limit` UTF-8 bytes, with a "… (N bytes cut)" suffix when it was cut."""
    if len(text) * _MAX_UTF8_BYTES_PER_CHAR <= limit:
        return text
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    # A cut through a multi-byte character drops its partial bytes.
    kept = raw[: max(0, limit)].decode("utf-8", "ignore")
    cut = len(raw) - len(kept.encode("utf-8", "surrogatepass"))
    return f"{kept}… ({cut} bytes cut)"
