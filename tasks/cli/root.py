"""The CLI's composition root: what one command uses, built on first use, closed at its end.

One command holds one set of settings, one engine (with its repository and ledger), one
small Redis pool and at most one Celery app, whose producer pool carries every task the
command sends. The root group opens it around each command (`command_root`), so nothing is
built at import and everything built is released when the command ends, however it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import redis
import sqlalchemy as sa

from sokovan.bootstrap import Adapters, build_probe_redis
from sokovan.config import Settings, load_settings
from sokovan.db.engine import current_revision
from sokovan.db.ledger import RunLedger
from sokovan.db.offload import OffloadedStore
from sokovan.db.repository import SchedulerRepository
from sokovan.db.stats import RunStats
from tasks.cli.errors import CliError

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

# Longest a broker check waits: a broker on this machine or the LAN answers in milliseconds.
BROKER_CHECK_SEC = 2.0


def broker_reachable(s: Settings, timeout: float = BROKER_CHECK_SEC) -> bool:
    """Whether the broker answers PING within `timeout` seconds (one try, no retries)."""
    client = build_probe_redis(s, timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class CommandRoot:
    """Settings and adapters of one command, each built the first time it is asked for."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._adapters: Adapters | None = None
        self._app: Celery | None = None
        self._schema_checked = False

    @property
    def settings(self) -> Settings:
        """Settings from the environment; a bad one reaches the error path as ConfigError."""
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def adapters(self) -> Adapters:
        if self._adapters is None:
            self._adapters = Adapters(self.settings)
        return self._adapters

    def missing_database(self) -> Path | None:
        """The SQLite file the settings name when it does not exist yet (else None)."""
        url = sa.engine.make_url(self.settings.effective_database_url)
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        # `sqlite:///file:PATH?mode=ro&uri=true` names the file as an SQLite URI.
        path = Path(str(url.database).removeprefix("file:").split("?", 1)[0])
        return None if path.exists() else path

    def require_data(self) -> None:
        """Refuses (exit 1) when the SQLite file is missing, creating nothing."""
        if missing := self.missing_database():
            raise CliError(
                f"failed: there is no data at {missing.parent} yet (no {missing.name}): "
                "run `sokovan up` or `sokovan db upgrade` first, or set SOKOVAN_VAR_DIR "
                "(or SOKOVAN_DATABASE_URL) to where the data is"
            )

    def engine(self, *, migrated: bool = True) -> sa.Engine:
        """The engine; refuses (once asked with `migrated`) a database with no schema yet.

        A command that needs a schema never creates the SQLite file or its folder: with no
        file there is no data yet, and the command says so instead of leaving an empty one.
        """
        if migrated and not self._schema_checked:
            self.require_data()
        engine = self.adapters.engine
        if migrated and not self._schema_checked:
            if current_revision(engine) is None:
                raise CliError(
                    f"failed: the database at {self.settings.effective_database_url} has no "
                    "schema yet: run `sokovan db upgrade` (or `sokovan up`)"
                )
            self._schema_checked = True
        return engine

    @property
    def repository(self) -> SchedulerRepository:
        self.engine()
        return self.adapters.repository

    @property
    def store(self) -> OffloadedStore:
        """The repository as the domain's functions await it."""
        self.engine()
        return self.adapters.store

    @property
    def ledger(self) -> RunLedger:
        self.engine()
        return self.adapters.ledger

    @property
    def stats(self) -> RunStats:
        self.engine()
        return self.adapters.stats

    @property
    def redis(self) -> redis.Redis:
        """A client over the command's one small connection pool."""
        return self.adapters.redis

    @property
    def app(self) -> Celery:
        """The command's Celery app, built on first use: every send shares its producer pool."""
        if self._app is None:
            from tasks.app import create_app  # late: Celery loads only for commands that send

            self._app = create_app(self.settings)
        return self._app

    def close(self) -> None:
        """Releases the app's connections, the Redis pool and the engine; failures are logged."""
        closers = []
        if self._app is not None:
            closers.append(("celery app", self._app.close))
        if self._adapters is not None:
            closers.append(("adapters", self._adapters.close))
        for name, closer in closers:
            try:
                closer()
            except Exception as e:
                log.warning("closing the %s failed: %s", name, e)
        self._app = self._adapters = None


_current: CommandRoot | None = None


@contextmanager
def command_root() -> Iterator[CommandRoot]:
    """A root for the command about to run, closed when it returns or fails."""
    global _current
    outer, current = _current, CommandRoot()
    _current = current
    try:
        yield current
    finally:
        _current = outer
        current.close()


def root() -> CommandRoot:
    """The running command's root."""
    if _current is None:
        raise RuntimeError("no command is running: open one with command_root()")
    return _current
