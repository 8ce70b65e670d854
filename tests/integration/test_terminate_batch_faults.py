"""A batch terminate under faults: an agent that never answers, and a Valkey that restarts."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from sokovan import constants as C
from sokovan.types import SessionStatus
from tests.agents import set_fault
from tests.cluster import cluster_without_worker, kernel_rows, running_cluster
from tests.e2e.test_deadlines import FAST
from tests.e2e.test_sweep import running_sessions
from tests.integration.test_terminate_batch_crash import kernels_held, statuses, store_pending
from tests.outages import RestartableValkey, celery_beat
from tests.workers import celery_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ENDED = {str(SessionStatus.TERMINATED), str(SessionStatus.CANCELLED)}


async def test_sc_op_004_batch_terminate_with_an_agent_that_never_answers(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-OP-004 with a silent agent: Given three RUNNING sessions on a1, whose destroys
    hang, and three on a2, ended by one `sokovan.sessions.terminate` message (no force),
    then a2's sessions end by their destroys with no forced kernel, a1's are given up at the
    TERMINATING deadline (FORCE_TERMINATED, one forced outcome each), one run carries all six,
    and the worker goes on: a session created afterwards on a2 reaches RUNNING."""
    async with running_cluster(tmp_path, valkey_url, runtime="sim", settings=FAST, beat=True) as c:
        requests = [{"name": f"s{i}", "agents": ["a1" if i < 3 else "a2"]} for i in range(6)]
        sids = running_sessions(c, *requests)
        await set_fault(
            c.senv.settings.redis_url,
            "a1",
            {"op": "hang", "method": "destroy_kernel", "seconds": 120},
        )

        answer = c.send("sokovan.sessions.terminate", session_ids=[str(s) for s in sids])

        assert answer["refused"] == [], answer
        assert [a["terminating"] for a in answer["sessions"]] == [True] * 6, answer
        assert {a["run_id"] for a in answer["sessions"]} == {answer["run_id"]}
        for sid in sids:
            c.wait_status(sid, SessionStatus.TERMINATED, timeout=90)
        kernels = [k for s in c.repo.sessions_by_ids(sids) for k in s.kernels]
        rows = kernel_rows(c.senv, [k.id for k in kernels])
        by_agent = {str(k.id): str(k.agent_id) for k in kernels}
        reasons = Counter((by_agent[k], status, reason) for k, (status, reason) in rows.items())
        assert reasons == Counter(
            {("a1", "TERMINATED", "FORCE_TERMINATED"): 3, ("a2", "TERMINATED", "USER_REQUESTED"): 3}
        ), reasons
        forced: Counter[str] = Counter()
        for run in c.ledger.list_runs("terminate_sessions", limit=100):
            forced.update(
                i.item_id for i in c.ledger.items(run.id) if i.evidence.get("verdict") == "forced"
            )
        assert {by_agent[k] for k in forced} == {"a1"} and set(forced.values()) == {1}, forced
        assert len(forced) == 3, forced

        after = c.create(name="after", agents=["a2"])
        assert c.wait_status(after, SessionStatus.RUNNING).status == SessionStatus.RUNNING


async def test_sc_op_004_batch_terminate_across_a_valkey_restart(tmp_path: Path) -> None:
    """SC-OP-004 with the broker restarting: Given 1,000 PENDING sessions and 16 RUNNING
    ones, sent as two `sokovan.sessions.terminate` messages, when Valkey (append-only, as a
    broker that keeps queued work does) is SIGKILLed as the first cancellations land and
    comes back 2 s later, then every session ends (CANCELLED or TERMINATED) without a new
    worker, the agents hold no kernel, and each RUNNING kernel has exactly one successful
    destroy in the ledger."""
    valkey = RestartableValkey(tmp_path / "valkey", append_only=True)
    valkey.start()
    settings = {"destroy_concurrency": "1", "visibility_timeout": "8"}
    try:
        async with cluster_without_worker(
            tmp_path, valkey.url, agents=2, settings=settings, latency={"destroy_kernel": 0.5}
        ) as c:
            agents = sorted(c.agents.agents)
            with celery_worker(c.senv, concurrency=2) as worker, celery_beat(c.senv):
                live = running_sessions(
                    c, *({"name": f"r{i}", "agents": [agents[i % 2]]} for i in range(16))
                )
                live_kernels = {str(k.id) for s in c.repo.sessions_by_ids(live) for k in s.kernels}
                pending = store_pending(c, 1000)
                ids = [str(s) for s in [*live, *pending]]
                step = C.SESSION_BATCH_MAX
                for i in range(0, len(ids), step):
                    c.app.send_task(
                        "sokovan.sessions.terminate", kwargs={"session_ids": ids[i : i + step]}
                    )
                wait_for(
                    lambda: statuses(c, pending)["CANCELLED"] > 0,
                    timeout=60,
                    interval=0.02,
                    what="the first sessions cancelled",
                )
                at_kill = statuses(c, [*live, *pending])
                valkey.kill(down_for=2)
                wait_for(
                    lambda: set(statuses(c, [*live, *pending])) <= ENDED,
                    timeout=120,
                    interval=0.5,
                    what=f"every session ended (at the kill: {dict(at_kill)})",
                )
                assert worker.proc.poll() is None, "the worker exited"
            assert sum(n for s, n in at_kill.items() if s not in ENDED) > 0, at_kill
            assert statuses(c, pending) == Counter({"CANCELLED": 1000})
            assert statuses(c, live) == Counter({"TERMINATED": 16})
            assert await kernels_held(c, agents) == 0
            ok: Counter[str] = Counter()
            for run in c.ledger.list_runs("terminate_sessions", limit=100):
                ok.update(i.item_id for i in c.ledger.items(run.id) if i.ok and not i.skipped)
            assert set(ok) == live_kernels and set(ok.values()) == {1}, ok
    finally:
        await asyncio.to_thread(valkey.stop)
