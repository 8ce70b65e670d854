"""Fixtures of the coordinator-level unit tests: a migrated SQLite file and a rig."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis

from sokovan.db.engine import create_engine, upgrade
from tests.rig import Rig, build_rig


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    eng = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
async def rig(engine: sa.Engine, redis: Redis) -> AsyncIterator[Rig]:
    yield build_rig(engine, redis)
