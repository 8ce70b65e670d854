"""What every SQL repository part shares: the engine and a dialect-aware insert."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite


class SqlBase:
    """Holds the engine; parts of the repository build on it."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def _insert(self) -> Any:
        """INSERT with ON CONFLICT support on both SQLite and PostgreSQL."""
        return postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
