"""Kernel presence in Valkey/Redis, as Backend.AI agents write and its manager reads it."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sokovan import constants as C
from sokovan import resp_batch
from sokovan.errors import PresenceUnavailable
from sokovan.types import AgentId, HealthCheckStatus, KernelId, KernelPresence

log = logging.getLogger(__name__)


def presence_key(kernel_id: KernelId | str) -> str:
    """The hash that holds one kernel's presence."""
    return f"{C.PRESENCE_KEY_PREFIX}{kernel_id}"


# The fields a verdict needs, in the order a batch read asks for them; a batch read leaves
# last_check and created_at out: the sweep never reads them, and each costs parsing per kernel.
PRESENCE_FIELDS = ("presence", "last_presence")

# One HMGET per key on the server, the server's TIME first: a batch costs one command to send
# and one flat reply to parse, where a pipeline pays the client library's overhead per key.
_BATCH_READ = """
local out = {}
local n = #ARGV
for i, key in ipairs(KEYS) do
  local values = redis.call('HMGET', key, unpack(ARGV))
  for j = 1, n do
    out[(i - 1) * n + j] = values[j]
  end
end
return {redis.call('TIME'), out}
"""

# The batch read as Backend.AI's manager makes it: besides reading, each existing presence hash
# gets last_check (and its TTL refreshed), then each agent of the batch its last-check key, all
# stamped with the server's TIME. KEYS: the presence keys, then the agent keys; ARGV: the
# number of presence keys, the presence TTL, the agent key TTL. Hashes without `presence` are
# left alone: a real agent's orphan cleanup skips them anyway, and writing would create them.
_BATCH_CHECK = """
local now = redis.call('TIME')
local n = tonumber(ARGV[1])
local out = {}
for i = 1, n do
  local values = redis.call('HMGET', KEYS[i], 'presence', 'last_presence')
  if values[1] then
    redis.call('HSET', KEYS[i], 'last_check', now[1])
    redis.call('EXPIRE', KEYS[i], ARGV[2])
  end
  out[2 * i - 1] = values[1]
  out[2 * i] = values[2]
end
for i = n + 1, #KEYS do
  redis.call('SET', KEYS[i], now[1], 'EX', ARGV[3])
end
return {now, out}
"""


# The sweep's first pass, scripted: used only where a batch cannot be written on the client's
# connections (see sokovan.resp_batch), and it answers as the batched pass does. The kernel ids
# come as one comma-joined argument (32 hex digits or the hyphenated form agents write). Only
# kernels that are not plainly fresh come back. With manager writes on, an existing hash whose
# last_check is older than the refresh is stamped, and KEYS are the agents' last-check keys.
# ARGV: ids, key prefix, stale threshold, write flag, presence TTL, agent TTL, refresh.
_SWEEP_SCAN = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local prefix = ARGV[2]
local stale = tonumber(ARGV[3])
local write = ARGV[4] == '1'
local refresh = tonumber(ARGV[7])
local out = {}
local n = 0
for id in string.gmatch(ARGV[1], '[^,]+') do
  n = n + 1
  if #id == 32 then
    id = string.sub(id, 1, 8) .. '-' .. string.sub(id, 9, 12) .. '-' .. string.sub(id, 13, 16)
      .. '-' .. string.sub(id, 17, 20) .. '-' .. string.sub(id, 21)
  end
  local key = prefix .. id
  local values = redis.call('HMGET', key, 'presence', 'last_presence', 'last_check')
  local checked = values[3] and tonumber(values[3])
  if values[1] and write and not (checked and t - checked < refresh) then
    redis.call('HSET', key, 'last_check', now[1])
    redis.call('EXPIRE', key, ARGV[5])
  end
  local seen = values[2] and string.match(values[2], '^%d+%.?%d*$') and tonumber(values[2])
  if not (values[1] and seen and t - seen <= stale) then
    out[#out + 1] = n
    out[#out + 1] = values[1]
    out[#out + 1] = values[2]
  end
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], now[1], 'EX', ARGV[6])
end
return {now, n, out}
"""

_TIME = resp_batch.command(b"TIME")
_SCAN_FIELDS = (b"presence", b"last_presence", b"last_check")


def agent_last_check_key(agent_id: AgentId | str) -> str:
    """The key holding when the manager last checked one agent's kernels."""
    return f"{C.AGENT_LAST_CHECK_KEY_PREFIX}{agent_id}"


Raw = str | bytes | None


def judge(fields: dict[str, str], now: float, stale_after: float) -> KernelPresence | None:
    """Reads one presence hash; None when it has no `presence` field."""
    verdict = _verdict(fields.get("presence"), fields.get("last_presence"), now, stale_after)
    if verdict is None:
        return None
    return KernelPresence(
        verdict.presence,
        verdict.last_presence,
        last_check=_float(fields.get("last_check")),
        created_at=_float(fields.get("created_at")),
    )


def _verdict(presence: Raw, last_presence: Raw, now: float, stale: float) -> KernelPresence | None:
    if presence is None:
        return None
    seen = _float(last_presence)
    if seen is not None and now - seen > stale:
        return KernelPresence(HealthCheckStatus.STALE, seen)
    if presence == "1" or presence == b"1":
        return KernelPresence(HealthCheckStatus.HEALTHY, seen)
    return KernelPresence(HealthCheckStatus.UNHEALTHY, seen)


def _float(raw: Raw) -> float | None:
    try:
        return None if raw is None else float(raw)
    except ValueError:
        return None


def _all_accepted(replies: list[Any], what: str) -> None:
    """Raises RedisError when the store refused any command of a batch of writes."""
    failed = [r for r in replies if isinstance(r, Exception)]
    if failed:
        raise RedisError(f"{len(failed)} {what} refused: {failed[0]}")


def _judge_scan(
    replies: list[Any], now: float, stale: float, refresh: float
) -> tuple[dict[int, KernelPresence | None], list[int]]:
    """A batched scan's suspects (as `_verdict` judges them: no presence, or STALE) and the
    positions of present kernels whose last_check is due; replies[0] is the server's TIME."""
    found: dict[int, KernelPresence | None] = {}
    due: list[int] = []
    # A million kernels a sweep: the checks are written out here, not calls per kernel.
    for position, fields in enumerate(replies[1:]):
        if fields.__class__ is not list or fields[0] is None:  # no hash, or not a hash
            found[position] = None
            continue
        _, last_presence, last_check = fields
        try:
            seen = float(last_presence)
        except (TypeError, ValueError):
            seen = None
        if seen is not None and now - seen > stale:
            found[position] = KernelPresence(HealthCheckStatus.STALE, seen)
        try:
            if now - float(last_check) < refresh:
                continue
        except (TypeError, ValueError):
            pass
        due.append(position)
    return found, due


class ValkeyPresence:
    """Reads and writes presence hashes; one round trip per batch, however many kernels."""

    def __init__(
        self,
        redis: Redis,
        stale_after: float = C.PRESENCE_STALE_AFTER_SEC,
        ttl: int = C.PRESENCE_TTL_SEC,
        manager_writes: bool = False,
        check_refresh: float = 0.0,
    ) -> None:
        self._redis = redis
        self._stale_after = stale_after
        self._ttl = ttl
        self._manager_writes = manager_writes
        # A kernel's last_check younger than this is not written again (0: every scan).
        self._check_refresh = check_refresh
        self._scripted = False
        self._batch_read = redis.register_script(_BATCH_READ)
        self._batch_check = redis.register_script(_BATCH_CHECK)
        self._sweep_scan = redis.register_script(_SWEEP_SCAN)
        self.round_trips = 0

    async def check_kernel_presence_status_batch(
        self, kernel_ids: Sequence[KernelId], agent_ids: Sequence[AgentId | None] | None = None
    ) -> dict[KernelId, KernelPresence]:
        """Presence per kernel, judged against the server's clock; absent kernels are left out.

        Only `presence` and `last_presence` are read: the verdicts carry no last_check or
        created_at. With manager writes on, the same round trip stamps last_check on each
        kernel and the last-check key of each agent in `agent_ids`.
        """
        if not kernel_ids:
            return {}
        keys = [presence_key(k) for k in kernel_ids]
        try:
            reply: list[Any] = await self._read(keys, agent_ids)
        except (RedisError, OSError) as e:
            raise PresenceUnavailable(f"presence store unreadable: {e}") from e
        self.round_trips += 1
        (seconds, micros), values = reply
        now = float(seconds) + float(micros) / 1_000_000
        stale = self._stale_after
        out: dict[KernelId, KernelPresence] = {}
        fields = iter(values)
        # The same iterator twice over: each kernel takes the next two values.
        for kernel_id, presence, last_presence in zip(kernel_ids, fields, fields, strict=True):
            verdict = _verdict(presence, last_presence, now, stale)
            if verdict is not None:
                out[kernel_id] = verdict
        return out

    async def scan_for_suspects(
        self, kernel_ids: Sequence[str], agent_ids: Collection[AgentId] = ()
    ) -> dict[int, KernelPresence | None]:
        """The positions in `kernel_ids` of kernels whose presence is missing or STALE.

        Each maps to its verdict (None: no presence). The ids are text, as the database
        holds them. With manager writes on, each kernel whose last_check is older than the
        check refresh is stamped, and so is the last-check key of each agent in `agent_ids`.
        """
        if not kernel_ids:
            return {}
        try:
            try:
                found = await self._scan_batched(kernel_ids, agent_ids)
            except resp_batch.BatchUnavailable as e:
                if not self._scripted:
                    log.warning("presence scan runs as a script: %s", e)
                self._scripted = True
                found = await self._scan_scripted(kernel_ids, agent_ids)
        except (RedisError, OSError, TimeoutError) as e:
            raise PresenceUnavailable(f"presence store unreadable: {e}") from e
        self.round_trips += 1
        return found

    async def _scan_batched(
        self, kernel_ids: Sequence[str], agent_ids: Collection[AgentId]
    ) -> dict[int, KernelPresence | None]:
        prefix = C.PRESENCE_KEY_PREFIX
        # SQLite's text of an id is 32 hex digits: hyphenated here, inline (a million a sweep).
        keys = [
            (
                f"{prefix}{k[:8]}-{k[8:12]}-{k[12:16]}-{k[16:20]}-{k[20:]}"
                if len(k) == 32
                else prefix + k
            ).encode()
            for k in kernel_ids
        ]
        payload = _TIME + resp_batch.same_command((b"HMGET",), keys, _SCAN_FIELDS)
        replies = await resp_batch.exchange(self._redis, payload, len(keys) + 1)
        seconds, micros = replies[0]
        now = float(seconds) + float(micros) / 1_000_000
        found, due = _judge_scan(replies, now, self._stale_after, self._check_refresh)
        if self._manager_writes:
            await self._stamp([keys[p] for p in due], agent_ids, seconds)
        return found

    async def _stamp(self, keys: list[bytes], agent_ids: Collection[AgentId], now: bytes) -> None:
        """last_check on kernels' hashes (a hash that expired since its read gets only this
        field, and its TTL: a real agent's cleanup skips a hash without presence) and the
        agents' last-check keys."""
        agents = [agent_last_check_key(a).encode() for a in sorted(agent_ids)]
        if not keys and not agents:
            return
        ttl, agent_ttl = b"%d" % self._ttl, b"%d" % C.AGENT_LAST_CHECK_TTL_SEC
        payload = b"".join(
            (
                resp_batch.same_command((b"HSET",), keys, (b"last_check", now)),
                resp_batch.same_command((b"EXPIRE",), keys, (ttl,)),
                resp_batch.same_command((b"SET",), agents, (now, b"EX", agent_ttl)),
            )
        )
        replies = await resp_batch.exchange(self._redis, payload, 2 * len(keys) + len(agents))
        _all_accepted(replies, "presence stamp(s)")

    async def _scan_scripted(
        self, kernel_ids: Sequence[str], agent_ids: Collection[AgentId]
    ) -> dict[int, KernelPresence | None]:
        writes = self._manager_writes
        args: list[str | float] = [
            ",".join(kernel_ids),
            C.PRESENCE_KEY_PREFIX,
            self._stale_after,
            1 if writes else 0,
            self._ttl,
            C.AGENT_LAST_CHECK_TTL_SEC,
            self._check_refresh,
        ]
        keys = [agent_last_check_key(a) for a in sorted(agent_ids)] if writes else []
        reply: list[Any] = await self._sweep_scan(keys=keys, args=args)
        (seconds, micros), scanned, values = reply
        if int(scanned) != len(kernel_ids):
            raise ValueError(
                f"kernel_ids: {len(kernel_ids)} ids sent, {scanned} read; an id is empty or"
                " holds a comma"
            )
        now = float(seconds) + float(micros) / 1_000_000
        stale = self._stale_after
        out: dict[int, KernelPresence | None] = {}
        fields = iter(values)
        for position, presence, last_presence in zip(fields, fields, fields, strict=True):
            verdict = _verdict(presence, last_presence, now, stale)
            if verdict is None or verdict.presence == HealthCheckStatus.STALE:
                out[int(position) - 1] = verdict
        return out

    async def _read(self, keys: list[str], agent_ids: Sequence[AgentId | None] | None) -> Any:
        if not self._manager_writes:
            return await self._batch_read(keys=keys, args=PRESENCE_FIELDS)
        agents = sorted({a for a in agent_ids or () if a is not None})
        return await self._batch_check(
            keys=keys + [agent_last_check_key(a) for a in agents],
            args=[len(keys), self._ttl, C.AGENT_LAST_CHECK_TTL_SEC],
        )

    async def write_presence(
        self, kernel_ids: Iterable[KernelId | str], alive: bool = True, now: float | None = None
    ) -> None:
        """Marks kernels present (agent side), as Backend.AI's update_kernel_presence_batch.

        created_at and a first last_check are set only on a new hash, as the original's
        initialization does: the manager's checks own last_check from then on.
        """
        ids = list(kernel_ids)
        if not ids:
            return
        if now is None:
            now = await self.server_time()
        stamp = str(int(now))
        try:
            await self._write_batched(ids, stamp, alive)
            return
        except resp_batch.BatchUnavailable:
            pass
        async with self._redis.pipeline(transaction=False) as pipe:
            for kernel_id in ids:
                key = presence_key(kernel_id)
                pipe.hset(
                    key,
                    mapping={
                        "presence": "1" if alive else "0",
                        "last_presence": stamp,
                    },
                )
                pipe.hsetnx(key, "created_at", stamp)
                pipe.hsetnx(key, "last_check", stamp)
                pipe.expire(key, self._ttl)
            await pipe.execute()

    async def _write_batched(self, ids: list[KernelId | str], stamp: str, alive: bool) -> None:
        """The writes of `write_presence` for every kernel in one batch (an agent of thousands
        of kernels, or a seeded benchmark, writes them in seconds)."""
        keys = [presence_key(k).encode() for k in ids]
        at = stamp.encode()
        flag = b"1" if alive else b"0"
        payload = b"".join(
            (
                resp_batch.same_command(
                    (b"HSET",), keys, (b"presence", flag, b"last_presence", at)
                ),
                resp_batch.same_command((b"HSETNX",), keys, (b"created_at", at)),
                resp_batch.same_command((b"HSETNX",), keys, (b"last_check", at)),
                resp_batch.same_command((b"EXPIRE",), keys, (b"%d" % self._ttl,)),
            )
        )
        replies = await resp_batch.exchange(self._redis, payload, 4 * len(keys))
        _all_accepted(replies, "presence write(s)")

    async def server_time(self) -> float:
        """The presence store's clock, which every stamp and verdict follows."""
        seconds, micros = await self._redis.time()
        return float(seconds) + float(micros) / 1_000_000

    async def aclose(self) -> None:
        """Closes the client of the presence store."""
        await self._redis.aclose()

    async def remove_presence(self, kernel_ids: Iterable[KernelId | str]) -> None:
        """Drops presence hashes of kernels that are gone."""
        keys = [presence_key(k) for k in kernel_ids]
        if keys:
            await self._redis.delete(*keys)
