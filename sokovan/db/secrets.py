"""Cluster SSH keypairs at rest, encrypted with a key only the workers hold."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken

from sokovan.db.ledger import utcnow
from sokovan.db.schema import session_secrets
from sokovan.errors import ConfigError, NotFound
from sokovan.types import SessionId

log = logging.getLogger(__name__)


def load_or_create_key(secret_key: str, var_dir: Path) -> bytes:
    """The Fernet key from settings, else one generated once under var_dir (mode 600)."""
    if secret_key:
        key = secret_key.encode()
    else:
        path = var_dir / "secret.key"
        if not path.exists():
            var_dir.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_bytes(Fernet.generate_key())
            log.info("generated the secret key at %s", path)
        key = path.read_bytes().strip()
    try:
        Fernet(key)
    except ValueError as e:
        raise ConfigError(f"SOKOVAN_SECRET_KEY is not a valid Fernet key: {e}") from e
    return key


class SqlSecretStore:
    """SecretStore port over SQL with Fernet encryption."""

    def __init__(self, engine: sa.Engine, key: bytes) -> None:
        self._engine = engine
        self._fernet = Fernet(key)

    def _put(self, session_id: SessionId, private_key: str, public_key: str) -> None:
        token = self._fernet.encrypt(private_key.encode())
        with self._engine.begin() as conn:
            conn.execute(session_secrets.delete().where(session_secrets.c.session_id == session_id))
            conn.execute(
                session_secrets.insert().values(
                    session_id=session_id,
                    ssh_private_key=token,
                    ssh_public_key=public_key,
                    created_at=utcnow(),
                )
            )

    def _get(self, session_id: SessionId) -> tuple[str, str]:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    session_secrets.c.ssh_private_key, session_secrets.c.ssh_public_key
                ).where(session_secrets.c.session_id == session_id)
            ).first()
        if row is None:
            raise NotFound(f"no SSH keypair stored for session {session_id}")
        try:
            private = self._fernet.decrypt(row[0]).decode()
        except InvalidToken as e:
            raise ConfigError("the secret key cannot decrypt stored keypairs") from e
        return private, str(row[1])

    async def put_ssh_keypair(
        self, session_id: SessionId, private_key: str, public_key: str
    ) -> None:
        """Stores the session's cluster keypair, replacing any earlier one."""
        await asyncio.to_thread(self._put, session_id, private_key, public_key)

    async def get_ssh_keypair(self, session_id: SessionId) -> tuple[str, str]:
        """Returns (private_key, public_key); raises NotFound."""
        return await asyncio.to_thread(self._get, session_id)
