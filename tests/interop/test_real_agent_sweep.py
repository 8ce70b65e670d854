"""A real Backend.AI agent drops a kernel by itself; the sweep reaps it with evidence."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from sokovan.db.ledger import RunLedger
from sokovan.db.repository import SchedulerRepository
from sokovan.records import AgentRow
from sokovan.types import (
    AgentId,
    ImageConfig,
    KernelStatus,
    ResourceSlot,
    RunId,
    SessionId,
    SessionStatus,
)
from tasks.app import create_app
from tests.interop.conftest import RealAgent
from tests.workers import celery_worker, make_env, wait_for

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300), pytest.mark.xdist_group("interop")]

IMAGE = "cr.backend.ai/stable/python:3.9-ubuntu20.04"
# The dummy backend reports no containers, so the agent cleans up its kernel objects as
# "dangling" on its next registry pass (every 60 s): within two minutes of creation.
DROP_WITHIN_SEC = 150


async def test_kernel_dropped_by_the_real_agent_is_reaped_with_evidence(
    tmp_path: Path, valkey_url: str, real_agent: RealAgent
) -> None:
    """A real agent (26.9, dummy backend) drops a RUNNING kernel; a sweep reaps it.

    Given a session RUNNING on the real agent (which writes no presence for it: its dummy
    backend lists no containers),
    When the agent drops the kernel and a sweep runs,
    Then the agent, verified by the agent id its RPC checks, answers False, and the kernel
    is TERMINATED (STALE_KERNEL) with evidence: presence missing, check_running False.
    """
    senv = make_env(tmp_path, valkey_url, agent_call_timeout="30")
    repo = SchedulerRepository(senv.engine)
    ledger = RunLedger(senv.engine)
    repo.add_image(ImageConfig(canonical=IMAGE))
    repo.upsert_agent(
        AgentRow(
            AgentId(real_agent.agent_id),
            real_agent.rpc_addr,
            capacity=ResourceSlot.from_json({"cpu": "4", "mem": "8589934592"}),
        )
    )
    app = create_app(senv.settings)
    with celery_worker(senv):
        answer = app.send_task(
            "sokovan.session.create",
            kwargs={"request": {"image": IMAGE, "agents": [real_agent.agent_id]}},
        ).get(timeout=60)
        sid = SessionId(uuid.UUID(answer["session_id"]))
        wait_for(
            lambda: (
                repo.get_session(sid).status != SessionStatus.SCHEDULED
                and repo.get_session(sid).status
                in (SessionStatus.RUNNING, SessionStatus.TERMINATING, SessionStatus.TERMINATED)
            ),
            timeout=120,
            what="the session to start on the real agent",
        )
        assert repo.get_session(sid).status == SessionStatus.RUNNING
        (kernel,) = repo.get_session(sid).kernels
        runs: list[int] = []

        def swept() -> bool:
            reply = app.send_task(
                "sokovan.handler.run",
                kwargs={"handler": "sweep_stale_kernels", "trigger": "manual"},
            ).get(timeout=60)
            if reply.get("run_id"):
                runs.append(int(reply["run_id"]))
            done = repo.kernel_statuses([kernel.id])[kernel.id] == KernelStatus.TERMINATED
            if not done:
                time.sleep(5)
            return done

        wait_for(swept, timeout=DROP_WITHIN_SEC, interval=0.1, what="the sweep to reap")

        items = [i for r in runs for i in ledger.items(RunId(r)) if i.item_id == str(kernel.id)]
        dead = [i for i in items if i.evidence.get("verdict") == "dead"]
        assert len(dead) == 1, items
        assert dead[0].agent_id == real_agent.agent_id
        assert dead[0].evidence["presence"] == "missing"
        assert dead[0].evidence["check_running"] == "False"
        alive_before = [i for i in items if i.evidence.get("check_running") == "True"]
        assert all(i.evidence.get("verdict") == "alive" for i in alive_before)
        wait_for(
            lambda: repo.get_session(sid).status == SessionStatus.TERMINATED,
            timeout=60,
            what="the session to finish",
        )
