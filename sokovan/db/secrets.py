"""Cluster SSH keypairs at rest, encrypted with a key only the workers hold."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken

from sokovan.db.schema import session_secrets
from sokovan.errors import ConfigError, NotFound
from sokovan.types import SessionId, utcnow

log = logging.getLogger(__name__)


def load_or_create_key(secret_key: str, var_dir: Path) -> bytes:
    """The Fernet key from settings, else one generated once under var_dir (mode 600)."""
    if secret_key:
        key = secret_key.encode()
    else:
        path = var_dir / "secret.key"
        if not path.exists():
            _create_key_file(path)
        key = path.read_bytes().strip()
    try:
        Fernet(key)
    except ValueError as e:
        raise ConfigError(f"SOKOVAN_SECRET_KEY is not a valid Fernet key: {e}") from e
    return key


def _create_key_file(path: Path) -> None:
    """Writes a new key under a temporary name and links it in: processes starting at once
    all read the one key that won, never an empty or half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, Fernet.generate_key())
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        log.info("generated the secret key at %s", path)
    except FileExistsError:
        pass  # another process made it first; its key is the one
    finally:
        tmp.unlink(missing_ok=True)


class SqlSecretStore:
    """SecretStore port over SQL with Fernet encryption."""

    def __init__(self, engine: sa.Engine, key: bytes) -> None:
        self._engine = engine
        self._fernet = Fernet(key)

    def put_ssh_keypair(self, session_id: SessionId, private_key: str, public_key: str) -> None:
        """Stores the session's cluster keypair, replacing any earlier one."""
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

    def get_ssh_keypair(self, session_id: SessionId) -> tuple[str, str]:
        """Returns (private_key, public_key); raises NotFound."""
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
