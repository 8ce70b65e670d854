"""Secret environ values at rest, encrypted with the key of the cluster SSH keys.

A client stashes secret values first and sends references in their place; the submission
binds the references (and any secret value a raw sender put inline) to the new session;
the worker that calls the agent reads them back. Clear values stay in sessions.environ.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Mapping
from typing import Final

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken

from sokovan.constants import DEFAULT_SECRET_ENV_PATTERNS
from sokovan.db.schema import environ_secrets, sessions
from sokovan.errors import ConfigError, InvalidRequest
from sokovan.redaction import Patterns, is_secret_ref, ref_id_of, secret_ref, split_environ
from sokovan.types import SessionId, SessionStatus, utcnow

# A client that stored secret variables and never got its submission through leaves them
# unbound; after this long no submission can still be waiting for them.
UNBOUND_SECRET_TTL_SEC: Final = 86400


class SqlSecretEnviron:
    """SecretEnvironStore port over SQL with Fernet encryption."""

    def __init__(
        self, engine: sa.Engine, key: bytes, patterns: Patterns = DEFAULT_SECRET_ENV_PATTERNS
    ) -> None:
        self._engine = engine
        self._fernet = Fernet(key)
        self.patterns = tuple(patterns)

    def _row(self, name: str, value: str, session_id: SessionId | None) -> dict[str, object]:
        return {
            "ref": str(uuid.uuid4()),
            "session_id": session_id,
            "name": name,
            "value": self._fernet.encrypt(value.encode()),
            "created_at": utcnow(),
        }

    def stash(
        self, environ: Mapping[str, str], declared: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Stores the secret values unbound; returns the environ with references for them.

        `declared` holds variables that are secret whatever their names.
        """
        merged = {**environ, **(declared or {})}
        _, secret = split_environ(environ, self.patterns)
        secret.update(declared or {})
        rows = {n: self._row(n, v, None) for n, v in secret.items() if not is_secret_ref(v)}
        if rows:
            with self._engine.begin() as conn:
                conn.execute(environ_secrets.insert(), list(rows.values()))
        return {
            name: secret_ref(str(rows[name]["ref"])) if name in rows else value
            for name, value in merged.items()
        }

    def discard(self, environ: Mapping[str, str]) -> int:
        """Deletes the still-unbound secrets an environ refers to (a refused submission)."""
        refs = [ref_id_of(v) for v in environ.values() if is_secret_ref(v)]
        if not refs:
            return 0
        with self._engine.begin() as conn:
            result = conn.execute(
                environ_secrets.delete().where(
                    environ_secrets.c.ref.in_(refs), environ_secrets.c.session_id.is_(None)
                )
            )
        return int(result.rowcount or 0)

    def bind(
        self,
        session_id: SessionId,
        environ: Mapping[str, str],
        conn: sa.Connection | None = None,
    ) -> dict[str, str]:
        """Binds the environ's secrets to the session; returns the clear part to store.

        With `conn`, in that transaction (the session's own insert). Raises InvalidRequest
        naming the variable whose reference is unknown or used.
        """
        if conn is None:
            with self._engine.begin() as own:
                return self.bind(session_id, environ, own)
        clear, secret = split_environ(environ, self.patterns)
        for name, value in secret.items():
            if not is_secret_ref(value):
                continue
            result = conn.execute(
                environ_secrets.update()
                .where(
                    environ_secrets.c.ref == ref_id_of(value),
                    environ_secrets.c.session_id.is_(None),
                )
                .values(session_id=session_id, name=name)
            )
            if result.rowcount != 1:
                raise InvalidRequest(
                    "unknown or already used secret reference", field=f"environ.{name}"
                )
        inline = [self._row(n, v, session_id) for n, v in secret.items() if not is_secret_ref(v)]
        if inline:
            conn.execute(environ_secrets.insert(), inline)
        return clear

    def prune(self, unbound_ttl: float = UNBOUND_SECRET_TTL_SEC) -> int:
        """Deletes the secrets of finished sessions and unbound ones older than the TTL."""
        finished_statuses = [str(SessionStatus.TERMINATED), str(SessionStatus.CANCELLED)]
        done = sa.select(sessions.c.id).where(sessions.c.status.in_(finished_statuses))
        cutoff = utcnow() - dt.timedelta(seconds=unbound_ttl)
        with self._engine.begin() as conn:
            finished = conn.execute(
                environ_secrets.delete().where(environ_secrets.c.session_id.in_(done))
            )
            stale = conn.execute(
                environ_secrets.delete().where(
                    environ_secrets.c.session_id.is_(None), environ_secrets.c.created_at < cutoff
                )
            )
        return int(finished.rowcount or 0) + int(stale.rowcount or 0)

    def environs(self, session_ids: Collection[SessionId]) -> dict[SessionId, dict[str, str]]:
        """Each session's secret environ, decrypted; sessions without secrets are absent."""
        if not session_ids:
            return {}
        query = sa.select(
            environ_secrets.c.session_id, environ_secrets.c.name, environ_secrets.c.value
        ).where(environ_secrets.c.session_id.in_(list(session_ids)))
        out: dict[SessionId, dict[str, str]] = {}
        with self._engine.connect() as conn:
            rows = list(conn.execute(query))
        for sid, name, token in rows:
            try:
                value = self._fernet.decrypt(token).decode()
            except InvalidToken as e:
                raise ConfigError("the secret key cannot decrypt stored environ secrets") from e
            out.setdefault(SessionId(sid), {})[str(name)] = value
        return out
