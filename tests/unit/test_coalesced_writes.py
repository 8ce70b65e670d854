"""The store adapter's coalesced writes: a burst of per-session writes in a few batches."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sokovan.db.offload import Coalesced


class Writes:
    """A write function that records each batch it was given, optionally failing."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: list[str]) -> None:
        self.started.set()
        self.release.wait(5)
        self.batches.append(list(items))
        if self.fail_on in items:
            raise RuntimeError(f"cannot write {self.fail_on}")


async def test_a_burst_of_calls_is_written_in_few_batches_each_in_order() -> None:
    """Given 200 writes made at once, every item is written once, in the order of the
    calls, in fewer batches than calls, and every call returns after its item is written."""
    writes = Writes()
    write: Coalesced[str, None] = Coalesced(writes)
    items = [f"s{i}" for i in range(200)]
    await asyncio.gather(*(write(item) for item in items))
    assert [i for batch in writes.batches for i in batch] == items
    assert len(writes.batches) < len(items) / 10


async def test_calls_made_during_a_write_go_in_the_next_batch() -> None:
    """Given a write under way, calls made meanwhile wait for it and go in one next batch."""
    writes = Writes()
    writes.release.clear()
    write: Coalesced[str, None] = Coalesced(writes)
    first = asyncio.ensure_future(write("first"))
    await asyncio.to_thread(writes.started.wait, 5)
    later = [asyncio.ensure_future(write(f"later-{i}")) for i in range(3)]
    await asyncio.sleep(0)
    assert not any(f.done() for f in [first, *later])
    writes.release.set()
    await asyncio.gather(first, *later)
    assert writes.batches == [["first"], ["later-0", "later-1", "later-2"]]


async def test_a_failed_write_fails_the_calls_of_its_batch_only() -> None:
    """Given a batch whose write raises, each of its calls raises that error, and the
    next call is written in a batch of its own."""
    writes = Writes(fail_on="bad")
    write: Coalesced[str, None] = Coalesced(writes)
    results = await asyncio.gather(write("bad"), write("same-batch"), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "bad" in str(r) for r in results)
    await write("after")
    assert writes.batches[-1] == ["after"]
    with pytest.raises(RuntimeError, match="bad"):
        await write("bad")


async def test_lookups_answer_each_call_with_its_own_item() -> None:
    """Given 64 lookups made at once (a task connecting to its agents), they cost a few
    queries, and each call gets the answer for its own key, a missing one included."""
    queries: list[list[str]] = []

    def lookup(keys: list[str]) -> list[str | None]:
        queries.append(keys)
        return [None if k == "a13" else k.upper() for k in keys]

    find: Coalesced[str, str | None] = Coalesced(lookup)
    keys = [f"a{i}" for i in range(64)]

    found = await asyncio.gather(*(find(k) for k in keys))

    assert found == [None if k == "a13" else k.upper() for k in keys]
    assert len(queries) <= 2 and sorted(k for q in queries for k in q) == sorted(keys)
