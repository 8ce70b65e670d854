"""The cluster keypair pool on real SQLite (migrated): atomic takes, encryption, refill."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_public_key

from sokovan import constants as C
from sokovan.db.engine import create_engine, upgrade
from sokovan.db.keypool import SqlKeypairPool
from sokovan.db.offload import OffloadedKeypairPool
from sokovan.db.schema import keypair_pool, sessions
from sokovan.errors import ConfigError
from sokovan.scheduler.launcher.keys import ClusterKeys, generate_cluster_ssh_keypair
from sokovan.types import utcnow

pytestmark = pytest.mark.integration

# Few real keys keep the tests quick; fake pairs stand in where no key is parsed.
FAKE = [(f"-----BEGIN RSA PRIVATE KEY-----\nk{i}\n", f"ssh-rsa AAAA{i} x") for i in range(60)]


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    eng = create_engine(f"sqlite:///{tmp_path / 'pool.db'}")
    upgrade(eng)
    return eng


class RecordingRefiller:
    def __init__(self) -> None:
        self.requests = 0

    async def request_refill(self) -> None:
        self.requests += 1


def new_pool(engine: sa.Engine) -> OffloadedKeypairPool:
    """The KeypairPool port over a fresh SQL pool with its own key."""
    return OffloadedKeypairPool(SqlKeypairPool(engine, Fernet.generate_key()))


async def assert_concurrent_takes_are_disjoint(engine: sa.Engine) -> None:
    """Eight threads want 72 keys of a pool of 60 at once: each key goes to exactly one."""
    with engine.begin() as conn:
        conn.execute(keypair_pool.delete())
    pool = new_pool(engine)
    await pool.add(FAKE, "rsa")
    got: list[list[tuple[str, str]]] = []
    lock, start = threading.Lock(), threading.Barrier(8)

    def taker() -> None:
        start.wait()
        mine = [pair for _ in range(3) for pair in pool.sync.take(3, "rsa")]
        with lock:
            got.append(mine)

    threads = [threading.Thread(target=taker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    handed = [pair for mine in got for pair in mine]
    assert len(handed) == len(set(handed))  # none twice
    assert set(handed) == set(FAKE)  # none lost
    assert await pool.count("rsa") == 0


def test_concurrent_takes_never_hand_a_key_out_twice(engine: sa.Engine) -> None:
    asyncio.run(assert_concurrent_takes_are_disjoint(engine))


async def test_private_keys_are_encrypted_at_rest_and_taken_once(engine: sa.Engine) -> None:
    pool = new_pool(engine)
    await pool.add(FAKE[:3], "rsa")
    with engine.connect() as conn:
        stored = [bytes(r[0]) for r in conn.execute(sa.select(keypair_pool.c.ssh_private_key))]
    assert len(stored) == 3 and all(b"PRIVATE KEY" not in raw for raw in stored)
    assert await pool.take(2, "rsa") == FAKE[:2]  # oldest first
    assert await pool.take(5, "rsa") == FAKE[2:3]  # fewer when the pool is short
    assert await pool.take(1, "rsa") == []
    assert await pool.count("ed25519") == 0


async def test_pool_sized_zero_makes_every_key_on_demand(engine: sa.Engine) -> None:
    """SC-LA-016: with no pool the key is RSA-2048, PEM private, OpenSSH public, cluster comment."""
    pool = new_pool(engine)
    await pool.add(FAKE[:2], "rsa")
    keys = ClusterKeys(pool, target=0, refiller=RecordingRefiller())
    assert await keys.take_pooled(2) == []
    pair = await keys.one()
    assert pair.private_key.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert pair.public_key.endswith(C.SSH_KEY_COMMENT)
    loaded = load_pem_private_key(pair.private_key.encode(), password=None)
    assert getattr(loaded, "key_size", None) == C.SSH_KEY_BITS
    assert await pool.count("rsa") == 2  # untouched


async def test_empty_pool_falls_back_to_on_demand_and_asks_for_a_refill(engine: sa.Engine) -> None:
    refiller = RecordingRefiller()
    keys = ClusterKeys(
        new_pool(engine),
        target=4,
        refiller=refiller,
    )
    first = await keys.one()
    assert first.public_key.startswith("ssh-rsa ")
    await keys.used()
    await keys.used()  # a second ask within the kick interval is not sent again
    assert refiller.requests == 1


async def test_fill_reaches_the_target_and_plan_covers_the_deficit(engine: sa.Engine) -> None:
    pool = new_pool(engine)
    keys = ClusterKeys(pool, target=3)
    plan = await keys.plan_refill()
    assert plan.counts == (3,) and "refilling 3" in plan.note
    assert await keys.fill(10) == 4  # stops once full; at most one insert batch over
    assert await pool.count("rsa") == 4
    assert (await keys.plan_refill()).note == "pool full (4 of 3)"
    taken = await keys.take_pooled(4)
    for pair in taken:
        load_pem_private_key(pair.private_key.encode(), password=None)
    assert len({p.public_key for p in taken}) == 4


async def test_refill_waits_while_a_burst_is_launching(engine: sa.Engine) -> None:
    now = utcnow()
    rows = [
        {
            "id": uuid.uuid4(),
            "status": "SCHEDULED",
            "status_data": {},
            "user_uuid": uuid.UUID(int=0),
            "environ": {},
            "created_at": now,
            "status_changed_at": now,
        }
        for _ in range(C.KEYPAIR_REFILL_DEFER_BACKLOG + 1)
    ]
    with engine.begin() as conn:
        conn.execute(sessions.insert(), rows)
    keys = ClusterKeys(new_pool(engine), target=8)
    plan = await keys.plan_refill()
    assert plan.counts == () and "deferred" in plan.note and plan.recheck


def test_ed25519_keys_are_openssh_and_unknown_types_are_refused() -> None:
    pair = generate_cluster_ssh_keypair("ed25519")
    assert pair.private_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert pair.public_key.startswith("ssh-ed25519 ") and pair.public_key.endswith(
        C.SSH_KEY_COMMENT
    )
    load_ssh_public_key(pair.public_key.rsplit(" ", 1)[0].encode())
    with pytest.raises(ConfigError, match="SOKOVAN_KEYPAIR_TYPE"):
        ClusterKeys(None, key_type="dsa")
