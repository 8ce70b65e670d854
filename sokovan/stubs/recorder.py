"""Stub of SessionRecorder: what the launcher stores per session, recorded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sokovan.types import (
    SessionId,
)


class FakeSessionRecorder:
    """Records the network ids and error infos the launcher stores per session."""

    def __init__(self) -> None:
        self.network_ids: dict[SessionId, str | None] = {}
        self.network_id_calls: list[tuple[SessionId, str | None]] = []
        self.error_infos: dict[SessionId, list[Mapping[str, Any]]] = {}

    async def update_session_network_id(
        self, session_id: SessionId, network_id: str | None
    ) -> None:
        self.network_id_calls.append((session_id, network_id))
        self.network_ids[session_id] = network_id

    async def update_session_error_info(
        self, session_id: SessionId, error_info: Mapping[str, Any]
    ) -> None:
        self.error_infos.setdefault(session_id, []).append(dict(error_info))
