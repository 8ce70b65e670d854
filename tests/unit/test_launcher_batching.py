"""Many sessions per run: one create task per agent, one create_kernels per session.

SC-LA-005, SC-LA-006, SC-LA-008, SC-LA-016 and SC-LA-017 as they read when a run starts
many sessions at once. The completion's bulk moves in SQL are in
tests/integration/test_start_completion.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sokovan.constants import SSH_KEY_COMMENT
from sokovan.errors import DispatchError
from sokovan.ports import FanOut
from sokovan.scheduler.launcher import SessionLauncher, create_kernels_on_agent
from sokovan.scheduler.launcher.creation import KEYPAIR_FROM_STORE, KEYPAIR_FROM_WORKER
from sokovan.stubs.recorder import FakeSessionRecorder
from sokovan.stubs.secrets import FakeSecretStore
from sokovan.types import (
    AgentBatch,
    AgentId,
    ClusterMode,
    ItemOutcome,
    KernelId,
    Operation,
    RunId,
    SessionId,
)
from tests.unit.test_launcher_start import IMAGES, make_kit, make_session


def sessions_called(kit: Any, agent: str) -> list[SessionId]:
    return [c.args[0] for c in kit.pool.clients[AgentId(agent)].calls_to("create_kernels")]


async def test_sc_la_005_a_run_sends_one_task_per_agent_and_one_call_per_session() -> None:
    """SC-LA-005/006: 6 one-kernel sessions and a 2-agent cluster in one run.

    Given sessions spread over a1 and a2, when the run starts them, then one fan-out
    leaves with one batch per agent, and each agent gets one create_kernels per session
    (an agent takes one session per call), each with only that session's kernels.
    """
    kit = make_kit(("a1", "a2"))
    singles = [make_session(("a1",) if i % 2 else ("a2",)) for i in range(6)]
    cluster = make_session(("a1", "a2"), mode=ClusterMode.MULTI_NODE)

    await kit.launcher.start_sessions_for_handler([*singles, cluster], IMAGES, run_id=RunId(9))

    [record] = kit.fanout.records
    assert sorted(b.agent_id for b in record.batches) == ["a1", "a2"]
    for agent in ("a1", "a2"):
        expected = [s.id for s in [*singles, cluster] if AgentId(agent) in _agents(s)]
        assert sorted(map(str, sessions_called(kit, agent))) == sorted(map(str, expected))
        for call in kit.pool.clients[AgentId(agent)].calls_to("create_kernels"):
            session = next(s for s in [*singles, cluster] if s.id == call.args[0])
            assert call.args[1] == [k.id for k in session.kernels if k.agent_id == agent]
    assert len(record.outcomes) == 8 and all(o.ok for o in record.outcomes)
    assert kit.recorder.error_infos == {}


async def test_an_agents_sessions_are_split_into_tasks_of_a_bounded_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SC-LA-005: past CREATE_SESSIONS_PER_TASK sessions an agent gets another task.

    With the bound at 2, five sessions on a1 (one of them 2 kernels) and one on a2 leave
    as three tasks for a1 (2, 2 and 1 sessions, a session never split) and one for a2.
    """
    monkeypatch.setattr("sokovan.scheduler.launcher.launcher.CREATE_SESSIONS_PER_TASK", 2)
    kit = make_kit(("a1", "a2"))
    on_a1 = [make_session(("a1", "a1")), *(make_session(("a1",)) for _ in range(4))]
    on_a2 = make_session(("a2",))

    await kit.launcher.start_sessions_for_handler([*on_a1, on_a2], IMAGES)

    [record] = kit.fanout.records
    shape = [(b.agent_id, [i["session_id"] for i in b.items]) for b in record.batches]
    ids = [str(s.id) for s in on_a1]
    assert shape == [
        ("a1", [ids[0], ids[0], ids[1]]),
        ("a1", [ids[2], ids[3]]),
        ("a1", [ids[4]]),
        ("a2", [str(on_a2.id)]),
    ]
    assert len(sessions_called(kit, "a1")) == 5 and all(o.ok for o in record.outcomes)


def _agents(session: Any) -> set[AgentId]:
    return {k.agent_id for k in session.kernels}


async def test_sc_la_016_a_session_on_one_agent_gets_a_fresh_keypair_that_is_never_stored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SC-LA-016: the worker that calls the agent makes the keypair; nothing keeps it.

    Given two sessions on a1 (one kernel; two kernels), when they start, then each
    create_kernels carries an RSA keypair (PEM private, OpenSSH public with the cluster
    comment), the two sessions' keys differ, and no key is stored, batched or logged.
    """
    kit = make_kit(("a1",), real_keys=True)
    one, two = make_session(("a1",)), make_session(("a1", "a1"))

    with caplog.at_level(logging.DEBUG):
        await kit.launcher.start_sessions_for_handler([one, two], IMAGES)

    calls = kit.pool.clients[AgentId("a1")].calls_to("create_kernels")
    keys = {call.args[0]: call.args[3]["ssh_keypair"] for call in calls}
    assert set(keys) == {one.id, two.id}
    for pair in keys.values():
        private = serialization.load_pem_private_key(pair["private_key"].encode(), None)
        assert isinstance(private, rsa.RSAPrivateKey)
        assert pair["private_key"].startswith("-----BEGIN RSA PRIVATE KEY-----")
        assert pair["public_key"].startswith("ssh-rsa ")
        assert pair["public_key"].endswith(f" {SSH_KEY_COMMENT}")
        public = serialization.load_ssh_public_key(pair["public_key"].encode())
        assert isinstance(public, rsa.RSAPublicKey)
        assert public.public_numbers() == private.public_key().public_numbers()
    assert keys[one.id]["private_key"] != keys[two.id]["private_key"]
    assert kit.secrets.keypairs == {} and kit.secrets.reads == []
    [record] = kit.fanout.records
    items = [item for batch in record.batches for item in batch.items]
    assert {item["keypair_source"] for item in items} == {KEYPAIR_FROM_WORKER}
    wire = json.dumps(items) + json.dumps([o.to_json() for o in record.outcomes])
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for pair in keys.values():
        assert pair["private_key"] not in wire and pair["private_key"] not in logged


async def test_sc_la_006_a_session_over_agents_shares_one_stored_keypair() -> None:
    """SC-LA-006: kernels on two agents get the same keypair, stored once, read per agent."""
    kit = make_kit(("a1", "a2"), real_keys=True)
    session = make_session(("a1", "a2"), mode=ClusterMode.MULTI_NODE)

    await kit.launcher.start_sessions_for_handler([session], IMAGES)

    private, public = kit.secrets.keypairs[session.id]
    for agent in ("a1", "a2"):
        [call] = kit.pool.clients[AgentId(agent)].calls_to("create_kernels")
        assert call.args[3]["ssh_keypair"] == {"private_key": private, "public_key": public}
    items = [item for b in kit.fanout.records[0].batches for item in b.items]
    assert {item["keypair_source"] for item in items} == {KEYPAIR_FROM_STORE}
    assert sorted(map(str, kit.secrets.reads)) == [str(session.id)] * 2


async def test_sc_la_008_a_hung_session_times_out_alone_within_its_agents_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SC-LA-008: three sessions on a1; a1 never answers for the second one.

    With a 2 s start timeout, the first and third sessions are created, the second
    fails with a TimeoutError error info and one warning naming it, and the task ends.
    """
    kit = make_kit(("a1",), timeout=2.0)
    first, slow, third = (make_session(("a1",)) for _ in range(3))
    never = asyncio.Event()

    async def answer(session_id: SessionId, kernel_ids: list[KernelId], *_: object) -> Any:
        if session_id == slow.id:
            await never.wait()
        return [{"id": str(k), "container_id": f"c-{k}"} for k in kernel_ids]

    kit.pool.clients[AgentId("a1")].script("create_kernels", answer)

    with caplog.at_level(logging.WARNING):
        await kit.launcher.start_sessions_for_handler([first, slow, third], IMAGES)

    [record] = kit.fanout.records
    ok = {o.detail["session_id"]: o.ok for o in record.outcomes}
    assert ok == {str(first.id): True, str(slow.id): False, str(third.id): True}
    [info] = kit.recorder.error_infos[slow.id]
    assert info["name"] == "TimeoutError" and "2.0" in info["message"]
    timeouts = [r for r in caplog.records if "timed out" in r.getMessage()]
    assert len(timeouts) == 1 and str(slow.id) in timeouts[0].getMessage()


async def test_create_kernels_in_flight_per_agent_stay_under_the_bound() -> None:
    """One task's sessions go concurrently, never more than the bound at once."""
    kit = make_kit(("a1",))
    sessions = [make_session(("a1",)) for _ in range(7)]
    await kit.launcher.start_sessions_for_handler(sessions, IMAGES)
    [batch] = kit.fanout.records[0].batches
    # Stored keypairs: every session is ready at once, so only the bound holds them back.
    secrets = FakeSecretStore()
    for session in sessions:
        await secrets.put_ssh_keypair(session.id, "PRIVATE", "ssh-rsa AAAA")
    items = [{**item, "keypair_source": KEYPAIR_FROM_STORE} for item in batch.items]
    in_flight, peak = 0, 0

    async def answer(session_id: SessionId, kernel_ids: list[KernelId], *_: object) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return [{"id": str(k), "container_id": f"c-{k}"} for k in kernel_ids]

    kit.pool.clients[AgentId("a1")].script("create_kernels", answer)

    outcomes = await create_kernels_on_agent(kit.pool, secrets, AgentId("a1"), items, concurrency=3)

    assert peak == 3 and len(outcomes) == 7 and all(o.ok for o in outcomes)


async def test_sc_la_017_a_refused_dispatch_is_recorded_on_every_session() -> None:
    """SC-LA-017: the broker refuses the run's fan-out -> each session keeps an error info."""

    class BrokerDownFanOut:
        async def dispatch(
            self,
            run_id: RunId,
            operation: Operation,
            batches: Sequence[AgentBatch],
            skipped: Sequence[ItemOutcome] = (),
        ) -> str:
            raise DispatchError("broker down")

    kit = make_kit(("a1",))
    recorder = FakeSessionRecorder()
    refusing: FanOut = BrokerDownFanOut()
    launcher = SessionLauncher(kit.pool, refusing, recorder, kit.secrets, {})
    sessions = [make_session(("a1",)) for _ in range(3)]

    await launcher.start_sessions_for_handler(sessions, IMAGES)

    for session in sessions:
        [info] = recorder.error_infos[session.id]
        assert info["name"] == "DispatchError" and "broker down" in info["message"]
