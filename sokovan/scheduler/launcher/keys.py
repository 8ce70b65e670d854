"""The SSH keypair the kernels of one cluster session use to reach each other.

Keys come from a pool made ahead of demand (`ClusterKeys`), so a burst of sessions does
not wait for key generation; when the pool runs dry they are made on demand, as before.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from redis.asyncio import Redis

from sokovan import constants as C
from sokovan.constants import SSH_KEY_BITS, SSH_KEY_COMMENT
from sokovan.db.offload import offload
from sokovan.errors import ConfigError
from sokovan.ports import KeypairPool, KeypairRefiller

log = logging.getLogger(__name__)

# Below this share of the target, taking keys asks for a refill.
KEYPAIR_POOL_LOW_WATER: Final = 0.5
# A process asks for a refill at most this often: a burst takes keys in many tasks.
KEYPAIR_REFILL_KICK_EVERY_SEC: Final = 5.0
# Keys per generate task (~0.6 s of CPU for RSA): short enough that a launch task queued
# behind one is not held up long, large enough that a refill is a few dozen tasks.
KEYPAIR_REFILL_CHUNK: Final = 16
# Keys per pool insert inside a generate task; a crash loses at most these.
KEYPAIR_INSERT_BATCH: Final = 4
# The refill mark's lifetime estimates the wave's length (this per key, at most the max), so
# a lost wave is retried once it lapses.
KEYPAIR_REFILL_SEC_PER_KEY: Final = 0.05
KEYPAIR_REFILL_MARK_MAX_SEC: Final = 120

# RSA-2048 is what Backend.AI makes and every kernel image accepts; Ed25519 is far cheaper
# to make but needs an OpenSSH in the image that takes it (OpenSSH 6.5 or later).
KEY_TYPES = ("rsa", "ed25519")


@dataclass(frozen=True, slots=True)
class ClusterSSHKeyPair:
    """A private key in PEM and its public key in OpenSSH authorized-keys form."""

    private_key: str
    public_key: str

    def __repr__(self) -> str:
        # Keeps the private key out of logs and tracebacks.
        return f"ClusterSSHKeyPair(public_key={self.public_key!r}, private_key=<hidden>)"

    def to_agent(self) -> dict[str, str]:
        """The agent's ClusterSSHKeyPair mapping."""
        return {"private_key": self.private_key, "public_key": self.public_key}


def check_key_type(key_type: str) -> str:
    """The key type if known; raises ConfigError naming the setting otherwise."""
    if key_type not in KEY_TYPES:
        known = ", ".join(KEY_TYPES)
        raise ConfigError(f"SOKOVAN_KEYPAIR_TYPE={key_type!r} is not valid: expected {known}")
    return key_type


def generate_cluster_ssh_keypair(key_type: str = "rsa") -> ClusterSSHKeyPair:
    """Generates a fresh keypair (RSA is CPU-bound: call it off the event loop)."""
    if check_key_type(key_type) == "ed25519":
        key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = ed25519.Ed25519PrivateKey.generate()
        # Ed25519 has no PKCS#1 form; OpenSSH reads its own format.
        form = serialization.PrivateFormat.OpenSSH
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=SSH_KEY_BITS)
        form = serialization.PrivateFormat.TraditionalOpenSSL
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    private = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=form,
        encryption_algorithm=serialization.NoEncryption(),
    )
    return ClusterSSHKeyPair(
        private_key=private.decode("ascii"),
        public_key=f"{public.decode('ascii')} {SSH_KEY_COMMENT}",
    )


# Made in a worker thread, so the loop keeps serving other sessions meanwhile.
create_cluster_ssh_keypair = offload(generate_cluster_ssh_keypair)


@dataclass(frozen=True, slots=True)
class RefillPlan:
    """Key counts of the generate tasks to send, why, and whether to look again soon."""

    counts: tuple[int, ...]
    note: str
    recheck: bool = False  # deferred by a burst: the refill task looks again shortly


class ClusterKeys:
    """Hands out cluster keypairs: from the pool first, made on demand when it runs dry.

    A pool size of 0 (or no pool) makes every key on demand, as Backend.AI does.
    """

    def __init__(
        self,
        pool: KeypairPool | None,
        *,
        key_type: str = "rsa",
        target: int = C.KEYPAIR_POOL_SIZE,
        refiller: KeypairRefiller | None = None,
        redis: Redis | None = None,
    ) -> None:
        self.key_type = check_key_type(key_type)
        self.target = max(0, target) if pool is not None else 0
        self._pool = pool
        self._refiller = refiller
        self._redis = redis
        # RSA generation holds the GIL: one at a time leaves the loop free to serve replies.
        self._keygen = asyncio.Lock()
        self._kicked_at = -math.inf

    async def take_pooled(self, count: int) -> list[ClusterSSHKeyPair]:
        """Up to `count` keypairs from the pool, each handed out once; fewer when it is low."""
        if self._pool is None or not self.target or count <= 0:
            return []
        try:
            pairs = await self._pool.take(count, self.key_type)
        except Exception as e:  # the pool is a shortcut: making keys still works without it
            log.warning("keypair pool unreadable, making %s key(s) on demand: %s", count, e)
            return []
        if len(pairs) < count:
            log.info("keypair pool had %s of %s key(s); the rest are made now", len(pairs), count)
        return [ClusterSSHKeyPair(private, public) for private, public in pairs]

    async def make(self) -> ClusterSSHKeyPair:
        """A keypair made now, one at a time per process."""
        async with self._keygen:
            return await create_cluster_ssh_keypair(self.key_type)

    async def one(self) -> ClusterSSHKeyPair:
        """One keypair: pooled if there is one, else made now."""
        pooled = await self.take_pooled(1)
        return pooled[0] if pooled else await self.make()

    async def used(self) -> None:
        """After keys were taken: asks for a refill when the pool is below its low-water mark."""
        if self._pool is None or self._refiller is None or not self.target:
            return
        now = time.monotonic()
        if now - self._kicked_at < KEYPAIR_REFILL_KICK_EVERY_SEC:
            return
        try:
            left = await self._pool.count(self.key_type)
            if left >= self.target * KEYPAIR_POOL_LOW_WATER:
                return
            self._kicked_at = now
            await self._refiller.request_refill()
        except Exception as e:
            log.warning("keypair pool refill not requested: %s", e)

    async def plan_refill(self) -> RefillPlan:
        """The generate tasks that bring the pool to its target, or why there are none."""
        if self._pool is None or not self.target:
            return RefillPlan((), "keypair pool disabled (SOKOVAN_KEYPAIR_POOL_SIZE=0)")
        have = await self._pool.count(self.key_type)
        deficit = self.target - have
        if deficit <= 0:
            return RefillPlan((), f"pool full ({have} of {self.target})")
        backlog = await self._pool.launching(C.KEYPAIR_REFILL_DEFER_BACKLOG + 1)
        if backlog > C.KEYPAIR_REFILL_DEFER_BACKLOG:
            # A burst takes its keys on demand; filling now would only compete for the CPU.
            note = f"refill deferred: {backlog}+ session(s) launching ({have} pooled)"
            # The mark lapses before the recheck runs, so that recheck may schedule the next.
            recheck = await self._mark(C.KEYPAIR_RECHECK_KEY, C.KEYPAIR_RECHECK_SEC - 1)
            return RefillPlan((), note, recheck=recheck)
        wave = min(KEYPAIR_REFILL_MARK_MAX_SEC, max(5, deficit * KEYPAIR_REFILL_SEC_PER_KEY))
        if not await self._mark(C.KEYPAIR_REFILL_MARK_KEY, int(wave)):
            return RefillPlan((), f"a refill is under way ({have} of {self.target})")
        chunk = KEYPAIR_REFILL_CHUNK
        counts = tuple(min(chunk, deficit - i) for i in range(0, deficit, chunk))
        note = f"refilling {deficit} key(s) in {len(counts)} task(s) ({have} pooled)"
        return RefillPlan(counts, note)

    async def _mark(self, key: str, lapse: int) -> bool:
        """One refill wave (or one recheck) at a time across workers; the mark lapses."""
        if self._redis is None:
            return True
        return bool(await self._redis.set(key, "1", nx=True, ex=max(1, lapse)))

    async def fill(self, count: int) -> int:
        """Makes up to `count` keys into the pool, stopping once it is full; returns how many."""
        if self._pool is None or not self.target:
            return 0
        made = 0
        while made < count and not await self._full():
            # A few keys per insert: few SQL writes, and a crash loses little work.
            step = min(KEYPAIR_INSERT_BATCH, count - made)
            pairs = [await create_cluster_ssh_keypair(self.key_type) for _ in range(step)]
            await self._pool.add([(p.private_key, p.public_key) for p in pairs], self.key_type)
            made += step
        if made:
            await self._full()  # the task that tops the pool up ends the wave's mark
        return made

    async def _full(self) -> bool:
        """Whether the pool reached its target; a full pool ends the refill wave's mark."""
        assert self._pool is not None
        if await self._pool.count(self.key_type) < self.target:
            return False
        if self._redis is not None:
            await self._redis.delete(C.KEYPAIR_REFILL_MARK_KEY)
        return True
