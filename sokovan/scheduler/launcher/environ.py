"""Kernel environments resolved by the worker that calls the agent, never carried by a message.

The session's clear variables come from its row, the secret ones from the encrypted
store, and the BACKENDAI_* ones are derived as the launcher always did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence

from sokovan.ports import SecretEnvironStore
from sokovan.scheduler.launcher.kernel_config import kernel_environ, session_environ
from sokovan.types import ImageConfig, KernelId, SessionId, SessionInfo

SessionLoader = Callable[[Sequence[SessionId]], Awaitable[Sequence[SessionInfo]]]


def environs_of(
    session: SessionInfo, secret: Mapping[str, str], images: Mapping[KernelId, ImageConfig]
) -> dict[KernelId, dict[str, str]]:
    """Each named kernel's environ: the session's variables, its secrets, the BACKENDAI_* set."""
    full = dataclasses.replace(session, environ={**session.environ, **secret})
    shared = session_environ(full)
    return {
        k.id: {str(n): str(v) for n, v in kernel_environ(k, images[k.id], shared).items()}
        for k in session.kernels
        if k.id in images
    }


class StoredKernelEnvirons:
    """KernelEnvirons port over the sessions table and the secret environ store."""

    def __init__(self, load_sessions: SessionLoader, secrets: SecretEnvironStore) -> None:
        self._load = load_sessions
        self._secrets = secrets

    async def kernel_environs(
        self, images: Mapping[SessionId, Mapping[KernelId, ImageConfig]]
    ) -> dict[SessionId, dict[KernelId, dict[str, str]]]:
        """One read of the sessions and one of their secrets for a whole task."""
        ids = list(images)
        sessions = await self._load(ids)
        secrets = await self._secrets.get_secret_environs(ids)
        return {
            s.id: environs_of(s, secrets.get(s.id, {}), images[s.id])
            for s in sessions
            if s.id in images
        }
