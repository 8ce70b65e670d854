"""A real worker runs a terminate fan-out whose header tasks all report failures."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sokovan.db.ledger import RunLedger
from sokovan.db.repository import NewKernel, SchedulerRepository
from sokovan.types import (
    AgentId,
    KernelId,
    KernelStatus,
    ResourceSlot,
    RunStatus,
    SessionId,
    SessionStatus,
)
from tasks.app import create_app
from tests.workers import celery_worker, make_env, wait_for

pytestmark = pytest.mark.integration


def _terminating_session(repo: SchedulerRepository, agents: list[str | None]) -> SessionId:
    sid = SessionId(uuid.uuid4())
    kernels = [
        NewKernel(
            KernelId(uuid.uuid4()),
            None if a is None else AgentId(a),
            "python:3.12",
            ResourceSlot.from_json({"cpu": 1, "mem": "1073741824"}),
            cluster_idx=i + 1,
            cluster_hostname=f"k{i + 1}",
        )
        for i, a in enumerate(agents)
    ]
    repo.create_session(
        session_id=sid, name="doomed", kernels_=kernels, status=SessionStatus.TERMINATING
    )
    return sid


@pytest.mark.timeout(180)
def test_chord_with_failing_headers_still_records_counts(tmp_path: Path, valkey_url: str) -> None:
    """Given kernels on agents nobody can reach and one kernel with no agent,
    when a real worker runs the terminate handler,
    then every header task returns failure values, the chord body still runs,
    and the run row (from the migrations) carries the counts."""
    senv = make_env(tmp_path, valkey_url)
    repo = SchedulerRepository(senv.engine)
    _terminating_session(repo, ["ghost-1", "ghost-1", "ghost-2"])
    _terminating_session(repo, ["ghost-2", None])
    ledger = RunLedger(senv.engine)
    app = create_app(senv.settings)
    with celery_worker(senv):
        app.send_task("sokovan.handler.run", kwargs={"handler": "terminate_sessions"})
        wait_for(
            lambda: any(r.finished_at for r in ledger.list_runs("terminate_sessions")),
            what="the terminate run to be closed by the chord body",
        )
    run = ledger.list_runs("terminate_sessions")[0]
    assert run.status == RunStatus.FAILED
    assert (run.requested, run.succeeded, run.failed, run.skipped) == (5, 0, 4, 1)
    assert run.operation == "destroy_kernels" and run.fanout_id
    items = ledger.items(run.id)
    assert len(items) == 5
    assert all("ghost" in (i.error or "") for i in items if not i.skipped)
    # Failed destroys leave kernels TERMINATING for the next run; the unplaced one is cancelled.
    statuses = sorted(k.status for s in repo.sessions_in(list(SessionStatus)) for k in s.kernels)
    assert statuses.count(KernelStatus.TERMINATING) == 4
    assert statuses.count(KernelStatus.CANCELLED) == 1
