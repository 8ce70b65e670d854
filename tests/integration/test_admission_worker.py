"""Hostile payloads through a real Celery worker: refused as results, nothing created."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from sokovan.db.schema import kernels, runs, sessions
from sokovan.types import SessionStatus
from tests.admission_cases import CASES
from tests.cluster import cluster_without_worker, pool_children
from tests.workers import celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# A worker log line longer than this would mean a payload was logged.
MAX_LOG_LINE = 4096


def _counts(engine: sa.Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() or 0)
            for t in (sessions, kernels, runs)
        )


async def test_hostile_payloads_are_refused_by_the_worker(tmp_path: Path, valkey_url: str) -> None:
    """SC-AD-001, SC-AD-002, SC-AD-003: every hostile payload gets its documented error.

    Given a real worker and a reference agent, when each hostile payload of the table is sent
    to its public task, each answer is {error, kind, field} naming the right field, no task
    fails, no session, kernel or run row is created, no worker process dies, the worker log
    holds no payload, and a normal request afterwards reaches RUNNING. Terminating an unknown
    valid id is a NotFound result; terminating a finished session answers with a note."""
    async with cluster_without_worker(tmp_path, valkey_url, agents=1) as c:
        with celery_worker(c.senv, concurrency=2) as worker:
            pids = sorted(pool_children(worker.proc.pid))
            sent = [(case, c.app.send_task(case.task, kwargs=case.kwargs)) for case in CASES]
            for case, result in sent:
                answer = result.get(timeout=120)
                assert result.state == "SUCCESS", (case.id, result.state)
                assert set(answer) == {"error", "kind", "field"}, (case.id, answer)
                assert (answer["kind"], answer["field"]) == ("InvalidRequest", case.field), (
                    case.id,
                    answer,
                )
                assert len(json.dumps(answer)) < 700, case.id
            assert _counts(c.senv.engine) == (0, 0, 0)

            unknown = str(uuid.uuid4())
            result = c.app.send_task("sokovan.session.terminate", kwargs={"session_id": unknown})
            answer = result.get(timeout=60)
            assert result.state == "SUCCESS"
            assert (answer["kind"], answer["field"]) == ("NotFound", "session_id"), answer
            assert unknown in answer["error"]

            sid = c.create(name="after-the-storm")
            assert c.wait_status(sid, SessionStatus.RUNNING).status == SessionStatus.RUNNING
            assert c.send("sokovan.session.terminate", session_id=str(sid))["terminating"]
            c.wait_status(sid, SessionStatus.TERMINATED)
            again = c.send("sokovan.session.terminate", session_id=str(sid))
            assert again["terminating"] is False and "TERMINATED" in again["note"]

            assert sorted(pool_children(worker.proc.pid)) == pids
            log = worker.output()
        assert "Traceback" not in log
        longest = max(len(line) for line in log.splitlines())
        assert longest < MAX_LOG_LINE, f"a worker log line of {longest} chars"
        assert log.count("refused") >= len(CASES)
