"""What every SQL repository part shares: the engine and a dialect-aware insert."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from sokovan.db.feed import NULL_FEED, StatusFeed


class SqlBase:
    """Holds the engine; parts of the repository build on it."""

    # Where committed session status changes are published (sokovan.db.feed).
    feed: StatusFeed = NULL_FEED

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def _insert(self) -> Any:
        """INSERT with ON CONFLICT support on both SQLite and PostgreSQL."""
        return postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
