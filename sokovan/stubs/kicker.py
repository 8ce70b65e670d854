"""Stub of HandlerKicker: the handlers it was asked to start, recorded."""

from __future__ import annotations

from collections.abc import Sequence

from sokovan.types import (
    RunTrigger,
)


class RecordingKicker:
    """HandlerKicker that records what it was asked to start."""

    def __init__(self) -> None:
        self.kicks: list[tuple[str, RunTrigger, list[str] | None]] = []

    async def kick(self, handler: str, trigger: RunTrigger, scope: Sequence[str] | None) -> None:
        self.kicks.append((handler, trigger, None if scope is None else list(scope)))
