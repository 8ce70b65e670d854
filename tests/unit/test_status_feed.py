"""SC-OP-011: session status moves are published once committed, in the documented format."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any, get_args

import pytest
import sqlalchemy as sa

from sokovan import constants as C
from sokovan.admission.docs import PREAMBLE, render
from sokovan.admission.schemas import SessionStatusName
from sokovan.db.feed import StatusChange
from sokovan.db.repository import NewKernel, SchedulerRepository
from sokovan.scheduler.pending import schedule_pending
from sokovan.status_feed import RedisStatusFeed, entry_fields
from sokovan.types import (
    AgentId,
    KernelId,
    ResourceSlot,
    SessionId,
    SessionStatus,
)
from tasks import commands
from tests.workers import ROOT


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[StatusChange]] = []

    def publish(self, changes: Sequence[StatusChange]) -> None:
        self.batches.append(list(changes))

    def statuses(self, sid: SessionId) -> list[str]:
        return [c.status for batch in self.batches for c in batch if c.session_id == sid]


def kernel(agent: str | None = None) -> NewKernel:
    return NewKernel(
        KernelId(uuid.uuid4()),
        None if agent is None else AgentId(agent),
        "img",
        ResourceSlot.from_json({"cpu": "1"}),
    )


def test_every_session_move_is_published_after_commit(engine: sa.Engine) -> None:
    """Create, place from the queue, move, finish and cancel each publish their change once."""
    from sokovan.records import AgentRow

    repo = SchedulerRepository(engine)
    feed = Recorder()
    repo.feed = feed
    capacity = ResourceSlot.from_json({"cpu": "4"})
    repo.upsert_agent(AgentRow(AgentId("a1"), "tcp://127.0.0.1:1", capacity=capacity))
    queued, cancelled = SessionId(uuid.uuid4()), SessionId(uuid.uuid4())
    for sid in (queued, cancelled):
        repo.create_session(
            session_id=sid, name="s", kernels_=[kernel()], status=SessionStatus.PENDING
        )
    assert repo.cancel_pending([cancelled], "USER_REQUESTED") == [cancelled]
    assert schedule_pending(repo).placed == [queued]
    repo.transition_sessions([queued], SessionStatus.RUNNING, [SessionStatus.SCHEDULED])
    repo.transition_sessions([queued], SessionStatus.RUNNING, [SessionStatus.SCHEDULED])  # no-op
    repo.transition_sessions([queued], SessionStatus.TERMINATING, [SessionStatus.RUNNING])
    [k] = repo.get_session(queued).kernels
    repo.transition_kernels([k.id], "TERMINATED", ["SCHEDULED"])  # type: ignore[list-item,arg-type]
    assert repo.finish_sessions([queued]) == [queued]
    assert feed.statuses(queued) == ["PENDING", "SCHEDULED", "RUNNING", "TERMINATING", "TERMINATED"]
    assert feed.statuses(cancelled) == ["PENDING", "CANCELLED"]
    [cancel] = [c for b in feed.batches for c in b if c.status == "CANCELLED"]
    assert cancel.status_info == "USER_REQUESTED" and cancel.at.tzinfo is not None


def test_a_rolled_back_move_is_not_published(engine: sa.Engine) -> None:
    repo = SchedulerRepository(engine)
    feed = Recorder()
    repo.feed = feed
    sid = SessionId(uuid.uuid4())
    with pytest.raises(RuntimeError), repo.placement("default") as view:
        repo.create_session(
            session_id=sid, name="s", kernels_=[kernel()], status=SessionStatus.PENDING,
            conn=view.conn,
        )  # fmt: skip
        raise RuntimeError("placement failed")
    assert feed.batches == []


def test_redis_feed_writes_the_documented_fields_and_survives_a_dead_server(
    valkey_url: str,
) -> None:
    import redis

    key = f"test:status:{uuid.uuid4()}"
    feed = RedisStatusFeed(valkey_url, key=key, maxlen=50)
    sid = SessionId(uuid.uuid4())
    from sokovan.types import utcnow

    feed.publish([StatusChange(sid, "RUNNING", None, utcnow()) for _ in range(200)])
    client = redis.Redis.from_url(valkey_url, decode_responses=True)
    entries: Any = client.xrange(key)
    assert 50 <= len(entries) < 200  # trimmed, approximately
    fields = entries[-1][1]
    assert fields.keys() == {"v", "session_id", "status", "status_info", "at"}
    assert fields["v"] == C.STATUS_STREAM_FORMAT and fields["session_id"] == str(sid)
    client.delete(key)
    feed.close()
    dead = RedisStatusFeed("redis://127.0.0.1:1/0", timeout=0.2)
    dead.publish([StatusChange(sid, "RUNNING", None, utcnow())])  # logged, never raised


def test_readme_documents_the_stream_fields_and_key() -> None:
    text = (ROOT / "docs" / "reference" / "tasks.md").read_text()
    block = text.split("<!-- status-stream-fields -->", 1)[1].split("\n\n", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", block, re.M)
    from sokovan.types import utcnow

    change = StatusChange(SessionId(uuid.uuid4()), "RUNNING", None, utcnow())
    assert documented == list(entry_fields(change))
    assert f"`{C.STATUS_STREAM_KEY}`" in text


def test_schemas_know_every_session_status_and_the_docs_name_queue_and_install() -> None:
    assert list(get_args(SessionStatusName)) == [str(s) for s in SessionStatus]
    assert commands.QUEUE == C.TASK_QUEUE
    assert f"`{C.TASK_QUEUE}`" in PREAMBLE and "pip install 'celery[redis]'" in PREAMBLE
    assert PREAMBLE in render()
    for name in ("sokovan.session.get", "sokovan.session.list", "sokovan.run.get"):
        assert f"`{name}`" in render()
