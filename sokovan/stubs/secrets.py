"""Stubs of SecretStore and SecretEnvironStore: keypairs and secret environs in memory."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from sokovan.types import (
    SessionId,
)


class FakeSecretStore:
    """Keeps SSH keypairs in memory; records which sessions were read."""

    def __init__(self) -> None:
        self.keypairs: dict[SessionId, tuple[str, str]] = {}
        self.reads: list[SessionId] = []

    async def put_ssh_keypair(
        self, session_id: SessionId, private_key: str, public_key: str
    ) -> None:
        self.keypairs[session_id] = (private_key, public_key)

    async def get_ssh_keypair(self, session_id: SessionId) -> tuple[str, str]:
        self.reads.append(session_id)
        if session_id not in self.keypairs:
            from sokovan.errors import NotFound

            raise NotFound(f"no SSH keypair for session {session_id}")
        return self.keypairs[session_id]


class FakeSecretEnviron:
    """Secret environ values per session in memory; records which sessions were read."""

    def __init__(self, environs: Mapping[SessionId, Mapping[str, str]] | None = None) -> None:
        self.environs = {sid: dict(env) for sid, env in (environs or {}).items()}
        self.reads: list[list[SessionId]] = []

    async def get_secret_environs(
        self, session_ids: Collection[SessionId]
    ) -> dict[SessionId, dict[str, str]]:
        self.reads.append(list(session_ids))
        return {s: dict(self.environs[s]) for s in session_ids if s in self.environs}
