"""Presence: the verdict on one hash (judge) and the batched reader against real Valkey."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from sokovan import resp_batch
from sokovan.errors import PresenceUnavailable
from sokovan.presence import ValkeyPresence, judge, presence_key
from sokovan.scheduler.terminator.stale import read_presence
from sokovan.types import HealthCheckStatus, KernelId, KernelInfo, KernelPresence, SessionId
from tests.conftest import free_port
from tests.outages import RestartableValkey

NOW = 1_700_000_000.0
STALE_AFTER = 120.0


def fields(presence: str, last_presence: float | str, **extra: str) -> dict[str, str]:
    return {"presence": presence, "last_presence": str(last_presence), **extra}


def test_judge_missing_presence_field_is_none() -> None:
    """A hash without a `presence` field (or no hash at all) has no verdict."""
    assert judge({}, NOW, STALE_AFTER) is None
    assert judge({"last_presence": str(NOW)}, NOW, STALE_AFTER) is None


def test_judge_fresh_presence_is_healthy_with_its_fields() -> None:
    """presence "1" refreshed recently: HEALTHY, with the recorded times parsed."""
    verdict = judge(
        fields("1", NOW - 10, last_check=str(NOW - 5), created_at=str(NOW - 600)),
        NOW,
        STALE_AFTER,
    )

    assert verdict == KernelPresence(
        HealthCheckStatus.HEALTHY,
        last_presence=NOW - 10,
        last_check=NOW - 5,
        created_at=NOW - 600,
    )


def test_judge_presence_zero_is_unhealthy() -> None:
    """An agent that reports the kernel not present, recently: UNHEALTHY, not STALE."""
    verdict = judge(fields("0", NOW - 10), NOW, STALE_AFTER)

    assert verdict is not None and verdict.presence is HealthCheckStatus.UNHEALTHY


@pytest.mark.parametrize("presence", ["1", "0"])
def test_judge_old_refresh_is_stale(presence: str) -> None:
    """No refresh for longer than the threshold: STALE whatever the presence flag says."""
    verdict = judge(fields(presence, NOW - STALE_AFTER - 1), NOW, STALE_AFTER)

    assert verdict is not None and verdict.presence is HealthCheckStatus.STALE
    assert verdict.last_presence == NOW - STALE_AFTER - 1


def test_judge_exactly_at_threshold_is_not_stale() -> None:
    """The threshold is exclusive: now - last_presence == stale_after is still fresh."""
    verdict = judge(fields("1", NOW - STALE_AFTER), NOW, STALE_AFTER)

    assert verdict is not None and verdict.presence is HealthCheckStatus.HEALTHY


def test_judge_unreadable_times_do_not_make_a_kernel_stale() -> None:
    """A garbled last_presence is unknown, not old: the flag alone decides."""
    verdict = judge(fields("1", "yesterday", created_at="?"), NOW, STALE_AFTER)

    assert verdict is not None
    assert verdict.presence is HealthCheckStatus.HEALTHY
    assert (verdict.last_presence, verdict.created_at) == (None, None)


async def _server_now(redis: Redis) -> float:
    seconds, micros = await redis.time()
    return float(seconds) + float(micros) / 1_000_000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _commandstats(redis: Redis) -> dict[str, int]:
    info = await redis.info("commandstats")
    return {name: int(stat["calls"]) for name, stat in info.items()}


@pytest.mark.integration
async def test_valkey_presence_one_round_trip_per_batch_with_server_time(
    private_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading presence of many kernels is one pipelined trip that asks Valkey for TIME.

    Given fresh, old and absent presence hashes written against the server's clock,
    When the local clock is a day off and one batch is read,
    Then the verdicts follow the server's clock, and TIME ran once with one HMGET per kernel
    (no HGETALL), all on the server in one call. (A server of its own: the counters are
    server-wide, and other tests' agents and workers use the shared one.)
    """
    redis = private_redis
    reader = ValkeyPresence(redis, stale_after=STALE_AFTER)
    fresh, old, dead_flag, absent = (KernelId(uuid.uuid4()) for _ in range(4))
    server_now = await _server_now(redis)
    await reader.write_presence([fresh], now=server_now - 10)
    await reader.write_presence([old], now=server_now - 600)
    await reader.write_presence([dead_flag], alive=False, now=server_now - 10)
    before = await _commandstats(redis)
    local_clock = time.time
    monkeypatch.setattr(time, "time", lambda: local_clock() + 86_400)

    statuses = await reader.check_kernel_presence_status_batch([fresh, old, dead_flag, absent])

    monkeypatch.undo()
    after = await _commandstats(redis)
    assert reader.round_trips == 1
    assert {k: v.presence for k, v in statuses.items()} == {
        fresh: HealthCheckStatus.HEALTHY,
        old: HealthCheckStatus.STALE,
        dead_flag: HealthCheckStatus.UNHEALTHY,
    }
    assert after["cmdstat_time"] - before.get("cmdstat_time", 0) == 1
    assert after["cmdstat_hmget"] - before.get("cmdstat_hmget", 0) == 4
    assert "cmdstat_hgetall" not in after
    # The verdict's fields only: what the sweep reads.
    assert statuses[old] == KernelPresence(HealthCheckStatus.STALE, float(int(server_now - 600)))

    await reader.check_kernel_presence_status_batch([fresh])
    assert reader.round_trips == 2


@pytest.mark.integration
async def test_valkey_presence_written_like_an_agent(redis: Redis, scan_path: str) -> None:
    """write_presence stores Backend.AI's fields with a TTL and keeps the first created_at,
    written as one batch or, where a batch cannot be written, through the client's pipeline."""
    reader = ValkeyPresence(redis, ttl=300)
    kernel = KernelId(uuid.uuid4())
    server_now = await _server_now(redis)

    await reader.write_presence([kernel], now=server_now - 100)
    await reader.write_presence([kernel], now=server_now)

    raw = await redis.hgetall(presence_key(kernel))
    stored = {_text(k): _text(v) for k, v in raw.items()}
    assert stored == {
        "presence": "1",
        "last_presence": str(int(server_now)),
        # Set once, as the original's initialization does; the manager's checks own it after.
        "last_check": str(int(server_now - 100)),
        "created_at": str(int(server_now - 100)),
    }
    assert 0 < await redis.ttl(presence_key(kernel)) <= 300

    await reader.remove_presence([kernel])
    assert await reader.check_kernel_presence_status_batch([kernel]) == {}


@pytest.mark.integration
async def test_valkey_presence_empty_batch_makes_no_trip(redis: Redis) -> None:
    """No kernels: no round trip at all."""
    reader = ValkeyPresence(redis)

    assert await reader.check_kernel_presence_status_batch([]) == {}
    assert reader.round_trips == 0


@pytest.mark.integration
async def test_valkey_presence_unreachable_store_raises_presence_unavailable() -> None:
    """A store nobody listens on is PresenceUnavailable, not a redis exception."""
    client: Redis = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=2)
    try:
        reader = ValkeyPresence(client)
        with pytest.raises(PresenceUnavailable):
            await reader.check_kernel_presence_status_batch([KernelId(uuid.uuid4())])
        assert reader.round_trips == 0
    finally:
        await client.aclose()


@pytest.mark.integration
async def test_sweep_scan_through_a_killed_and_restarted_store(tmp_path: Path) -> None:
    """The batched scan on a store that is SIGKILLed is PresenceUnavailable (no half-read
    page), and the next scan after the store is back reads on a fresh connection."""
    server = RestartableValkey(tmp_path / "valkey")
    client: Redis = Redis.from_url(server.start(), socket_timeout=5)
    try:
        reader = ValkeyPresence(client)
        kernel = KernelId(uuid.uuid4())
        await reader.write_presence([kernel])
        assert await reader.scan_for_suspects([str(kernel)]) == {}
        server.kill(down_for=0, start=False)
        with pytest.raises(PresenceUnavailable):
            await reader.scan_for_suspects([str(kernel)])
        server.start()

        assert await reader.scan_for_suspects([str(kernel)]) == {0: None}  # the data went
        await reader.write_presence([kernel])
        assert await reader.scan_for_suspects([str(kernel), "x"]) == {1: None}
    finally:
        await client.aclose()
        server.stop()


@pytest.mark.integration
async def test_batched_scan_takes_a_key_of_another_type_for_no_presence(redis: Redis) -> None:
    """A hostile or stray key of another type at a kernel's presence name: that kernel has no
    presence (the agent is asked), and the verdicts of the page's others are unchanged."""
    reader = ValkeyPresence(redis, manager_writes=True)
    fresh, stray = KernelId(uuid.uuid4()), KernelId(uuid.uuid4())
    await reader.write_presence([fresh])
    await redis.set(presence_key(stray), "not a hash")

    assert await reader.scan_for_suspects([str(stray), str(fresh)]) == {0: None}
    assert await redis.get(presence_key(stray)) == b"not a hash"


@pytest.mark.integration
async def test_valkey_presence_stage_one_round_trips_equal_pages(redis: Redis) -> None:
    """Stage 1 over 25 kernels in pages of 10 makes 3 round trips (one TIME each), not 25."""
    reader = ValkeyPresence(redis, stale_after=STALE_AFTER)
    kernels = [KernelInfo(KernelId(uuid.uuid4()), SessionId(uuid.uuid4()), None) for _ in range(25)]
    server_now = await _server_now(redis)
    await reader.write_presence([k.id for k in kernels[:20]], now=server_now)
    await reader.write_presence([kernels[20].id], now=server_now - 600)
    before = await _commandstats(redis)

    judgement = await read_presence(reader, kernels, page_size=10)

    after = await _commandstats(redis)
    assert reader.round_trips == 3 and judgement.pages == 3
    assert after["cmdstat_time"] - before.get("cmdstat_time", 0) == 3
    assert after["cmdstat_hmget"] - before.get("cmdstat_hmget", 0) == 25
    assert [e.kernel_id for e in judgement.candidates] == [k.id for k in kernels[20:]]
    assert judgement.candidates[0].presence == HealthCheckStatus.STALE
    assert [e.presence for e in judgement.candidates[1:]] == [None] * 4


def _suspects_of(statuses: dict[KernelId, KernelPresence], ids: list[KernelId]) -> set[KernelId]:
    """What the sweep suspects after a batch read: no presence, or STALE."""
    return {k for k in ids if k not in statuses or statuses[k].presence is HealthCheckStatus.STALE}


@pytest.mark.integration
async def test_sweep_scan_returns_exactly_the_kernels_a_batch_read_suspects(
    private_redis: Redis, scan_path: str
) -> None:
    """SC-SK-001 at scale: the scan sends the ids as text and answers only for the kernels
    that are not plainly fresh; its suspects equal the batch read's, whatever the hashes hold
    (numbers in odd forms, garbage, a missing flag), and either text form of an id is read."""
    redis = private_redis
    reader = ValkeyPresence(redis, stale_after=STALE_AFTER)
    now = await _server_now(redis)
    hashes: dict[str, dict[str, str]] = {
        "fresh": {"presence": "1", "last_presence": str(int(now - 10))},
        "fresh float": {"presence": "1", "last_presence": f"{now - 10:.3f}"},
        "stale": {"presence": "1", "last_presence": str(int(now - 600))},
        "stale float": {"presence": "1", "last_presence": f"{now - 600:.6f}"},
        "stale exponent": {"presence": "1", "last_presence": f"{now - 600:.10e}"},
        "flag zero": {"presence": "0", "last_presence": str(int(now - 10))},
        "garbage time": {"presence": "1", "last_presence": "yesterday"},
        "hex time": {"presence": "1", "last_presence": "0x10"},
        "no time": {"presence": "1"},
        "no flag": {"last_presence": str(int(now - 10))},
        "at threshold": {"presence": "1", "last_presence": str(int(now - STALE_AFTER + 5))},
    }
    ids: dict[str, KernelId] = {}
    for name, mapping in hashes.items():
        ids[name] = KernelId(uuid.uuid4())
        await redis.hset(presence_key(ids[name]), mapping=mapping)  # type: ignore[arg-type]
    ids["absent"] = KernelId(uuid.uuid4())
    order = list(ids.values())
    expected = _suspects_of(await reader.check_kernel_presence_status_batch(order), order)
    # Half the ids as SQLite holds them (32 hex digits), half hyphenated as PostgreSQL does.
    texts = [k.hex if i % 2 else str(k) for i, k in enumerate(order)]

    found = await reader.scan_for_suspects(texts)

    assert {order[i] for i in found} == expected
    names = {v: k for k, v in ids.items()}
    assert {names[order[i]] for i in found} == {
        "stale",
        "stale float",
        "stale exponent",
        "no flag",
        "absent",
    }
    assert found[order.index(ids["absent"])] is None
    stale = found[order.index(ids["stale"])]
    assert stale is not None and stale.presence is HealthCheckStatus.STALE


@pytest.mark.integration
async def test_the_installed_client_takes_the_batched_path(private_redis: Redis) -> None:
    """The scan relies on redis-py's connections having a stream pair; with the installed
    redis-py it does: a page is plain HMGETs (one per kernel, one TIME), no script."""
    reader = ValkeyPresence(private_redis)
    ids = [str(uuid.uuid4()) for _ in range(25)]
    before = await _commandstats(private_redis)

    assert len(await reader.scan_for_suspects(ids)) == 25

    calls = {k: v - before.get(k, 0) for k, v in (await _commandstats(private_redis)).items()}
    assert (calls.get("cmdstat_hmget"), calls.get("cmdstat_time")) == (25, 1)
    assert not calls.get("cmdstat_evalsha") and not calls.get("cmdstat_eval")
    assert reader.round_trips == 1


@pytest.mark.integration
async def test_batched_scan_reads_any_id_text_in_its_place(private_redis: Redis) -> None:
    """Each id is its own command: an id holding a comma, or an empty one, is simply a kernel
    without presence, and the verdicts of the others stay in their places."""
    reader = ValkeyPresence(private_redis)
    fresh = KernelId(uuid.uuid4())
    await reader.write_presence([fresh])

    found = await reader.scan_for_suspects([str(fresh), "a,b", "", str(fresh)])

    assert found == {1: None, 2: None}
    assert await reader.scan_for_suspects([]) == {}


@pytest.mark.integration
async def test_scripted_scan_refuses_an_id_that_would_split(
    private_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script takes the ids as one comma-joined text: an id holding a comma (or an empty
    one) is a clear error naming the argument, rather than verdicts shifted onto the wrong
    kernels."""

    async def unavailable(*args: object) -> None:
        raise resp_batch.BatchUnavailable("no stream pair (test)")

    monkeypatch.setattr(resp_batch, "exchange", unavailable)
    reader = ValkeyPresence(private_redis)
    with pytest.raises(ValueError, match="kernel_ids"):
        await reader.scan_for_suspects([str(uuid.uuid4()), "a,b"])
    with pytest.raises(ValueError, match="kernel_ids"):
        await reader.scan_for_suspects([str(uuid.uuid4()), ""])
