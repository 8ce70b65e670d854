"""Stub of NetworkPlugin: networks created and destroyed, recorded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class FakeNetworkPlugin:
    """A network driver that records created and destroyed networks."""

    def __init__(self, prefix: str = "net", options: Mapping[str, Any] | None = None) -> None:
        self.prefix = prefix
        self.options = dict(options or {})
        self.created: list[str] = []
        self.destroyed: list[str] = []

    async def create_network(self, identifier: str) -> Mapping[str, Any]:
        self.created.append(identifier)
        network_id = f"{self.prefix}-{identifier}"
        return {"network_id": network_id, "options": {**self.options, "network_name": network_id}}

    async def destroy_network(self, network_id: str) -> None:
        self.destroyed.append(network_id)
