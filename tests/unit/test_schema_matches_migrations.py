"""The tables the migrations build are the ones sokovan/db/schema.py describes."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from sokovan.db.engine import create_engine, upgrade
from sokovan.db.schema import metadata


def test_migrations_build_the_declared_schema(tmp_path: Path) -> None:
    """No difference between the migrated SQLite database and schema.py (0004 included)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'schema.db'}")
    try:
        upgrade(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == []
