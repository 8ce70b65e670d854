"""SessionLauncher.trigger_image_pulling: one check_and_pull per agent (SC-LA-001..004)."""

from __future__ import annotations

import json
import uuid

from sokovan.errors import AgentError
from sokovan.scheduler.launcher import SessionLauncher, pull_images_on_agent
from sokovan.stubs.agents import FakeAgentClientPool
from sokovan.stubs.fanout import InProcessFanOut
from sokovan.stubs.recorder import FakeSessionRecorder
from sokovan.stubs.secrets import FakeSecretStore
from sokovan.types import (
    AgentBatch,
    AgentId,
    ImageConfig,
    ItemOutcome,
    KernelId,
    KernelInfo,
    Operation,
    RunId,
    SessionId,
    SessionInfo,
)

IMAGES = {
    "image1": ImageConfig(canonical="image1", digest="sha256:1"),
    "image2": ImageConfig(canonical="image2", digest="sha256:2"),
}


def session_on(*placements: tuple[str | None, str]) -> SessionInfo:
    """A session with one kernel per (agent, image) placement."""
    sid = SessionId(uuid.uuid4())
    kernels = tuple(
        KernelInfo(
            id=KernelId(uuid.uuid4()),
            session_id=sid,
            agent_id=None if agent is None else AgentId(agent),
            image=image,
        )
        for agent, image in placements
    )
    return SessionInfo(id=sid, kernels=kernels)


def make_launcher(pool: FakeAgentClientPool) -> tuple[SessionLauncher, InProcessFanOut]:
    async def execute(operation: Operation, batch: AgentBatch) -> list[ItemOutcome]:
        assert operation is Operation.CHECK_AND_PULL
        return await pull_images_on_agent(pool, batch.agent_id, batch.items)

    fanout = InProcessFanOut(execute)
    launcher = SessionLauncher(pool, fanout, FakeSessionRecorder(), FakeSecretStore(), {})
    return launcher, fanout


async def test_sc_la_001_check_and_pull_once_per_agent_with_its_images() -> None:
    """SC-LA-001: two sessions on agents a1 and a2 -> one check_and_pull per agent."""
    pool = FakeAgentClientPool()
    a1, a2 = pool.add("a1"), pool.add("a2")
    for client in (a1, a2):
        client.script("check_and_pull", {"image1": "pulled", "image2": "cached"})
    launcher, fanout = make_launcher(pool)
    s1 = session_on(("a1", "image1"), ("a2", "image2"))
    s2 = session_on(("a1", "image2"))

    await launcher.trigger_image_pulling([s1, s2], IMAGES, run_id=RunId(7))

    assert sorted(pool.acquired) == ["a1", "a2"]
    assert [c.args[0] for c in a1.calls_to("check_and_pull")] == [
        {"image1": IMAGES["image1"], "image2": IMAGES["image2"]}
    ]
    assert [c.args[0] for c in a2.calls_to("check_and_pull")] == [{"image2": IMAGES["image2"]}]
    [record] = fanout.records
    assert (record.run_id, record.operation) == (RunId(7), Operation.CHECK_AND_PULL)
    assert sorted(b.agent_id for b in record.batches) == ["a1", "a2"]
    every_kernel = {str(k.id): k for s in (s1, s2) for k in s.kernels}
    assert {o.item_id for o in record.outcomes} == set(every_kernel)
    for outcome in record.outcomes:
        kernel = every_kernel[outcome.item_id]
        assert outcome.ok and outcome.agent_id == kernel.agent_id
        assert outcome.detail["session_id"] == str(kernel.session_id)
        assert outcome.detail["answer"] == {"image1": "pulled", "image2": "cached"}[kernel.image]


async def test_sc_la_002_same_image_pulled_once_per_agent() -> None:
    """SC-LA-002: two sessions using image1 on a1 -> check_and_pull({"image1": config}) once."""
    pool = FakeAgentClientPool()
    a1 = pool.add("a1")
    launcher, fanout = make_launcher(pool)
    s1, s2 = session_on(("a1", "image1")), session_on(("a1", "image1"), ("a1", "image1"))

    await launcher.trigger_image_pulling([s1, s2], IMAGES)

    assert [c.args[0] for c in a1.calls_to("check_and_pull")] == [{"image1": IMAGES["image1"]}]
    [batch] = fanout.records[0].batches
    assert len(batch.items) == 1
    assert list(batch.items[0]["images"]) == ["image1"]
    # Every waiting kernel still gets its own outcome so its status can move on.
    assert len(fanout.records[0].outcomes) == 3


async def test_sc_la_003_empty_session_list_calls_no_agent() -> None:
    """SC-LA-003: no sessions -> no agent acquired and nothing dispatched."""
    pool = FakeAgentClientPool()
    pool.add("a1")
    launcher, fanout = make_launcher(pool)

    await launcher.trigger_image_pulling([], {})

    assert pool.acquired == []
    assert fanout.records == []


async def test_sc_la_004_failing_agent_does_not_block_others() -> None:
    """SC-LA-004: a1 refuses the connection, a2 still pulls; a1's kernels fail as values."""
    pool = FakeAgentClientPool()
    a1, a2 = pool.add("a1"), pool.add("a2")
    a1.script("check_and_pull", AgentError("Connection refused"))
    a2.script("check_and_pull", {"image1": "pulled"})
    launcher, fanout = make_launcher(pool)
    s1, s2 = session_on(("a1", "image1")), session_on(("a2", "image1"))

    await launcher.trigger_image_pulling([s1, s2], IMAGES)

    assert len(a2.calls_to("check_and_pull")) == 1
    outcomes = {o.agent_id: o for o in fanout.records[0].outcomes}
    assert not outcomes["a1"].ok
    assert outcomes["a1"].error is not None and "Connection refused" in outcomes["a1"].error
    assert outcomes["a1"].item_id == str(s1.kernels[0].id)
    assert outcomes["a2"].ok and outcomes["a2"].detail["answer"] == "pulled"
    assert fanout.records[0].failed == 1 and fanout.records[0].succeeded == 1


async def test_pull_kernels_without_agent_or_image_are_reported_not_pulled() -> None:
    """Kernels with no agent are skipped and unresolved images fail, with no agent call."""
    pool = FakeAgentClientPool()
    pool.add("a1")
    launcher, fanout = make_launcher(pool)
    session = session_on((None, "image1"), ("a1", "unknown:latest"))

    await launcher.trigger_image_pulling([session], IMAGES)

    assert pool.acquired == []
    [record] = fanout.records
    assert record.batches == []
    by_kernel = {o.item_id: o for o in record.skipped}
    no_agent, no_image = (by_kernel[str(k.id)] for k in session.kernels)
    assert no_agent.skipped and not no_agent.ok
    assert not no_image.skipped and not no_image.ok and "UnknownImage" in (no_image.error or "")


async def test_pull_batches_are_json_and_carry_the_waiting_kernels() -> None:
    """A pull batch survives JSON and names every kernel waiting on the agent's images."""
    pool = FakeAgentClientPool()
    pool.add("a1")
    launcher, fanout = make_launcher(pool)
    session = session_on(("a1", "image1"), ("a1", "image2"))

    await launcher.trigger_image_pulling([session], IMAGES)

    [batch] = fanout.records[0].batches
    item = json.loads(json.dumps(batch.items[0]))
    assert item["images"]["image2"]["digest"] == "sha256:2"
    assert item["images"]["image2"]["registry"]["password"] is None
    assert [k["kernel_id"] for k in item["kernels"]] == [str(k.id) for k in session.kernels]
