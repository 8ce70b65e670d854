"""The cluster keypair pool in SQL: keys made ahead of demand, encrypted, each taken once."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken

from sokovan.db.schema import keypair_pool, sessions
from sokovan.errors import ConfigError
from sokovan.types import SessionStatus, utcnow

# Sessions on their way to RUNNING: the ones that will ask for a keypair soon.
LAUNCHING = (
    SessionStatus.SCHEDULED,
    SessionStatus.PULLING,
    SessionStatus.PREPARED,
    SessionStatus.CREATING,
)


class SqlKeypairPool:
    """Pooled cluster keypairs in SQL, Fernet-encrypted like stored session keys."""

    def __init__(self, engine: sa.Engine, key: bytes) -> None:
        self._engine = engine
        self._fernet = Fernet(key)

    def take(self, count: int, key_type: str) -> list[tuple[str, str]]:
        """Up to `count` (private, public) keypairs, removed from the pool as they are taken."""
        if count <= 0:
            return []
        # One statement deletes the rows it returns: two takers never get the same row.
        # PostgreSQL skips rows another taker holds instead of waiting for it and getting
        # nothing; SQLite runs one writer at a time, so the subquery cannot race there.
        chosen = (
            sa.select(keypair_pool.c.id)
            .where(keypair_pool.c.key_type == key_type)
            .order_by(keypair_pool.c.id)
            .limit(count)
        )
        if self._engine.dialect.name == "postgresql":
            chosen = chosen.with_for_update(skip_locked=True)
        statement = (
            keypair_pool.delete()
            .where(keypair_pool.c.id.in_(chosen.scalar_subquery()))
            .returning(keypair_pool.c.ssh_private_key, keypair_pool.c.ssh_public_key)
        )
        with self._engine.begin() as conn:
            rows = conn.execute(statement).all()
        try:
            return [(self._fernet.decrypt(row[0]).decode(), str(row[1])) for row in rows]
        except InvalidToken as e:
            raise ConfigError("the secret key cannot decrypt pooled keypairs") from e

    def add(self, pairs: Sequence[tuple[str, str]], key_type: str) -> None:
        """Stores fresh keypairs for later takers."""
        if not pairs:
            return
        now = utcnow()
        rows = [
            {
                "key_type": key_type,
                "ssh_private_key": self._fernet.encrypt(private.encode()),
                "ssh_public_key": public,
                "created_at": now,
            }
            for private, public in pairs
        ]
        with self._engine.begin() as conn:
            conn.execute(keypair_pool.insert(), rows)

    def count(self, key_type: str) -> int:
        """Keypairs of this type waiting in the pool."""
        query = (
            sa.select(sa.func.count())
            .select_from(keypair_pool)
            .where(keypair_pool.c.key_type == key_type)
        )
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def launching(self, limit: int) -> int:
        """Sessions on their way to RUNNING, counted up to `limit`."""
        inner = (
            sa.select(sessions.c.id)
            .where(sessions.c.status.in_([str(s) for s in LAUNCHING]))
            .limit(limit)
            .subquery()
        )
        with self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(inner)).scalar() or 0)
