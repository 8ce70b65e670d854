"""`session create --count` and `session terminate` of many: batch answers become one document
per session, in order."""

from __future__ import annotations

from typing import Any

from sokovan import constants as C
from tasks.cli.remote import per_session


def test_batch_answers_map_back_to_each_request_in_order() -> None:
    """Given two batch messages (the maximum, then 2 more), one refusing its request 1 and
    the other refused as a whole, each request gets its own document in the order sent."""
    first = {
        "sessions": [{"session_id": f"s{n}", "status": "SCHEDULED"} for n in range(999)],
        "refused": [{"index": 1, "error": "image: unknown", "kind": "UnknownImage"}],
        "pull_run_id": 7,
    }
    second = {"error": "requests: too many", "kind": "InvalidRequest"}

    docs = per_session([first, second], C.SESSION_BATCH_MAX + 2, "pull_run_id")

    assert len(docs) == C.SESSION_BATCH_MAX + 2
    assert docs[0] == {"session_id": "s0", "status": "SCHEDULED", "pull_run_id": 7}
    assert docs[1] == {"error": "image: unknown", "kind": "UnknownImage"}
    assert docs[2]["session_id"] == "s1"
    assert docs[C.SESSION_BATCH_MAX - 1]["session_id"] == "s998"
    assert docs[-2:] == [second, second]


def test_terminate_answers_keep_their_own_run_id() -> None:
    """Terminate batches carry each session's whole answer: the documents are those answers,
    a refused id in its place, nothing added."""
    sessions: list[dict[str, Any]] = [
        {"session_id": "s0", "terminating": True, "run_id": 3, "force": False},
        {"session_id": "s2", "terminating": False, "status": "CANCELLED", "note": "n"},
    ]
    answer = {
        "sessions": sessions,
        "refused": [{"index": 1, "error": "no session", "kind": "NotFound", "field": "f"}],
        "run_id": 3,
    }

    docs = per_session([answer], 3)

    assert docs == [
        sessions[0],
        {"error": "no session", "kind": "NotFound", "field": "f"},
        sessions[1],
    ]
