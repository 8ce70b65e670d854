"""Delivery counters and the dead-letter list (SC-RC-005), on a real Valkey."""

from __future__ import annotations

from redis.asyncio import Redis

from sokovan import constants as C
from sokovan.deadletter import DeadLetters, Delivery, failed_outcomes, make_dead_letter


async def test_deliveries_count_up_until_the_task_finishes(redis: Redis) -> None:
    letters = DeadLetters(redis, counter_ttl=60)
    assert [(await letters.count_delivery("t1")).count for _ in range(3)] == [1, 2, 3]
    assert 0 < await redis.ttl(f"{C.DELIVERY_KEY_PREFIX}t1") <= 60
    await letters.finished("t1")
    assert await letters.count_delivery("t1") == Delivery(count=1, duplicate=True)
    assert await letters.count_delivery("t2") == Delivery(count=1, duplicate=False)


async def test_dead_letters_are_listed_newest_first_and_taken_by_id(redis: Redis) -> None:
    letters = DeadLetters(redis)
    for n in (1, 2):
        await letters.count_delivery(f"t{n}")
        await letters.add(
            make_dead_letter(f"t{n}", "x.task", [n], {}, deliveries=4, reason="r", run_id=n)
        )
    assert [d.task_id for d in await letters.list()] == ["t2", "t1"]
    assert await redis.exists(f"{C.DELIVERY_KEY_PREFIX}t1") == 0
    taken = await letters.take("t1")
    assert taken is not None and (taken.run_id, taken.message) == (1, {"args": [1], "kwargs": {}})
    assert await letters.take("t1") is None
    assert [d.task_id for d in await letters.list()] == ["t2"]


def test_a_huge_message_is_shown_cut_and_not_kept_for_a_resend() -> None:
    items = [{"kernel_id": "k" * 100}] * 20_000
    letter = make_dead_letter("t", "x", [1, "a1", items], {}, deliveries=4, reason="r")
    assert letter.message is None
    assert len(letter.args_repr) < C.DEADLETTER_ARGS_REPR_CHARS + 40


def test_failed_outcomes_name_every_kernel_of_a_batch() -> None:
    destroy = [{"kernel_id": "k1", "session_id": "s1"}, {"kernel_id": "k2", "session_id": "s1"}]
    pull = [{"images": {}, "kernels": [{"kernel_id": "k3", "session_id": "s2"}]}]
    assert [o.item_id for o in failed_outcomes("a1", destroy, "dead")] == ["k1", "k2"]
    (o,) = failed_outcomes("a1", pull, "dead")
    assert (o.item_id, o.agent_id, o.ok, o.error, o.detail) == (
        "k3",
        "a1",
        False,
        "dead",
        {"session_id": "s2"},
    )
    assert [o.item_id for o in failed_outcomes("a1", ["junk"], "dead")] == ["payload:a1"]
