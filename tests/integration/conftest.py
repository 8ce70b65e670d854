"""Fixtures shared by the integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sokovan.db.engine import create_engine, upgrade
from tests.conftest import free_port


@pytest.fixture
def offline_env(tmp_path: Path) -> dict[str, str]:
    """Settings of a migrated SQLite database and a broker nothing listens on."""
    var = tmp_path / "var"
    var.mkdir()
    db = f"sqlite:///{var / 'sokovan.db'}"
    upgrade(create_engine(db))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOKOVAN_")}
    env.update(
        SOKOVAN_VAR_DIR=str(var),
        SOKOVAN_DATABASE_URL=db,
        SOKOVAN_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        SOKOVAN_EMBEDDED_VALKEY="false",
    )
    return env
