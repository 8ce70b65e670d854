"""A throwaway PostgreSQL server (pgserver) with the migrations applied, for tests."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from sokovan.db.engine import create_engine, upgrade


@contextmanager
def postgres_engine() -> Iterator[sa.Engine]:
    """An engine on a fresh server with its own data folder; stopped and removed afterwards."""
    # Outside pytest's private temp folder: as root, pgserver runs the server as another
    # user, who must be able to reach the data folder.
    data = Path(tempfile.mkdtemp(prefix="sokovan-pg-"))
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about the runtime dir at import
        try:
            import pgserver
        except ImportError:
            pytest.fail("PostgreSQL tests need pgserver and psycopg: pip install -e '.[dev]'")
        server = pgserver.get_server(str(data / "data"), cleanup_mode="stop")
    uri = server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(uri)
    upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)
