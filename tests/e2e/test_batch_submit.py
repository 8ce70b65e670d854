"""One message submits many sessions: one task, one pull run, every session RUNNING."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sokovan.types import SessionId, SessionStatus
from tasks.api import Scheduler
from tests.cluster import IMAGE, running_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def test_one_submission_of_many_sessions_starts_them_all_and_refuses_the_bad_ones(
    tmp_path: Path, valkey_url: str
) -> None:
    """Given five requests of which one names an unknown image and one is malformed,
    when they are sent as one `sokovan.sessions.create`, three sessions are stored and reach
    RUNNING through one pull run, and the two refusals name their index and field."""
    async with running_cluster(tmp_path, valkey_url, runtime="sim") as c:
        requests = [
            {"image": IMAGE, "name": "b0"},
            {"image": "nope:1", "name": "b1"},
            {"image": IMAGE, "name": "b2", "kernels": 2},
            {"image": IMAGE, "name": "b3", "unknown": 1},
            {"image": IMAGE, "name": "b4"},
        ]
        answer = c.send("sokovan.sessions.create", requests=requests)
        assert [r["index"] for r in answer["refused"]] == [1, 3], answer
        assert (
            answer["refused"][0]["field"] == "image" and "nope:1" in answer["refused"][0]["error"]
        )
        assert answer["refused"][1]["field"] == "unknown"
        sessions = answer["sessions"]
        assert [s["status"] for s in sessions] == ["SCHEDULED"] * 3
        assert answer["pull_run_id"] is not None
        for sid in (s["session_id"] for s in sessions):
            s = c.wait_status(SessionId(uuid.UUID(sid)), SessionStatus.RUNNING)
            assert s.status == SessionStatus.RUNNING
        pull = c.ledger.get_run(answer["pull_run_id"])
        assert pull.requested == 4  # the kernels of all three sessions, in one run
        too_many = c.send("sokovan.sessions.create", requests=[])
        assert too_many["field"] == "requests" and "error" in too_many


async def test_one_message_terminates_many_from_the_python_api(
    tmp_path: Path, valkey_url: str
) -> None:
    """Given three RUNNING sessions, when `tasks.api.Scheduler.terminate_sessions` sends them
    with an unknown id as one `sokovan.sessions.terminate`, the answer names all three
    terminating under one run id and refuses the unknown id alone (NotFound, its index); the
    one run destroys the three kernels and the sessions end TERMINATED with the reason sent."""
    async with running_cluster(tmp_path, valkey_url, runtime="sim") as c:
        answer = c.send("sokovan.sessions.create", requests=[{"image": IMAGE}] * 3)
        sids = [SessionId(uuid.UUID(s["session_id"])) for s in answer["sessions"]]
        for sid in sids:
            c.wait_status(sid, SessionStatus.RUNNING)
        unknown = str(uuid.uuid4())

        sent = Scheduler(c.app, c.senv.settings).terminate_sessions(
            [str(sids[0]), unknown, str(sids[1]), str(sids[2])], reason="MAINTENANCE"
        )
        ended = sent.get(timeout=60)

        assert [s["session_id"] for s in ended["sessions"]] == [str(s) for s in sids]
        assert all(s["terminating"] for s in ended["sessions"]), ended
        assert {s["run_id"] for s in ended["sessions"]} == {ended["run_id"]}
        (refused,) = ended["refused"]
        assert (refused["index"], refused["kind"]) == (1, "NotFound"), refused
        for sid in sids:
            s = c.wait_status(sid, SessionStatus.TERMINATED)
            assert s.status_info == "MAINTENANCE"
        run = c.ledger.get_run(ended["run_id"])
        assert (run.requested, run.succeeded) == (3, 3), run
