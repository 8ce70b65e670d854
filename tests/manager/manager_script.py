"""A manager that is not this project: Celery and redis only, driven by the documented names.

Run with the python of a venv holding only `celery[redis]`; prints one JSON line of what it
saw. Environment: SOKOVAN_REDIS_URL, IMAGE.
"""

import json
import os
import pickle  # noqa: F401 -- only to show the hostile send below is a pickled one
import sys
import time
from typing import Any

import redis
from celery import Celery

try:
    import sokovan  # noqa: F401

    sys.exit("this venv must not hold the project")
except ImportError:
    pass

URL = os.environ["SOKOVAN_REDIS_URL"]
QUEUE = "sokovan"  # docs: every public task goes to this queue
STREAM = "sokovan:session-status"  # docs: the session status stream
FIELDS = {"v", "session_id", "status", "status_info", "at"}

manager = Celery(broker=URL, backend=URL)
stream = redis.Redis.from_url(URL, decode_responses=True)
seen: list[dict[str, str]] = []  # every stream entry read, in order
last = "0"


def call(name: str, timeout: float = 60, **kwargs: Any) -> Any:
    return manager.send_task(name, kwargs=kwargs, queue=QUEUE).get(timeout=timeout)


def follow(sid: str, wanted: str, timeout: float = 90) -> list[str]:
    """Reads the stream until the session reaches `wanted`; returns the statuses it passed."""
    return follow_all([sid], wanted, timeout)[sid]


def follow_all(sids: list[str], wanted: str, timeout: float = 90) -> dict[str, list[str]]:
    """Reads the stream until every session reached `wanted`; the statuses each passed."""
    global last
    passed: dict[str, list[str]] = {sid: [] for sid in sids}
    waiting = set(sids)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        reply: Any = stream.xread({STREAM: last}, block=1000)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id
                assert set(fields) == FIELDS, fields
                assert fields["v"] == "1", fields
                seen.append(fields)
                sid = fields["session_id"]
                if sid in passed:
                    passed[sid].append(fields["status"])
                    if fields["status"] == wanted:
                        waiting.discard(sid)
    if waiting:
        raise SystemExit(f"sessions {sorted(waiting)} did not reach {wanted} on the stream")
    return passed


out: dict[str, Any] = {}
created = call("sokovan.session.create", request={"image": os.environ["IMAGE"]})
sid = created["session_id"]
out["created"] = created
out["to_running"] = follow(sid, "RUNNING")
out["get_running"] = call("sokovan.session.get", session_id=sid)
out["list_running"] = call("sokovan.session.list", statuses=["RUNNING"], limit=10)
terminated = call("sokovan.session.terminate", session_id=sid)
out["terminate"] = terminated
out["to_terminated"] = follow(sid, "TERMINATED")
out["get_terminated"] = call("sokovan.session.get", session_id=sid)
# The terminate run closes after its batch; its counts are read once it has.
deadline = time.monotonic() + 60
while True:
    run = call("sokovan.run.get", run_id=terminated["run_id"])
    if run.get("status") != "running" or time.monotonic() > deadline:
        break
    time.sleep(0.5)
out["run"] = run
# Many sessions in one message each way; an unknown id is refused alone.
batch = call("sokovan.sessions.create", requests=[{"image": os.environ["IMAGE"]}] * 3)
out["batch_created"] = batch
ids = [s["session_id"] for s in batch["sessions"]]
out["batch_to_running"] = follow_all(ids, "RUNNING")
unknown = "00000000-0000-0000-0000-000000000002"
out["batch_terminate"] = call("sokovan.sessions.terminate", session_ids=[*ids, unknown])
out["batch_to_terminated"] = follow_all(ids, "TERMINATED")
out["refused_id"] = call("sokovan.session.get", session_id="not-an-id")
out["unknown_id"] = call("sokovan.session.get", session_id="00000000-0000-0000-0000-000000000001")
out["refused_limit"] = call("sokovan.session.list", limit=100000)
out["refused_extra"] = call("sokovan.run.get", run_id=1, bogus=True)

# A pickled message: the workers accept JSON only, and answer with a failure, not silence.
hostile = Celery(broker=URL, backend=URL)
hostile.conf.update(task_serializer="pickle", accept_content=["json", "pickle"])
result = hostile.send_task(
    "sokovan.session.get", kwargs={"session_id": sid}, queue=QUEUE, serializer="pickle"
)
try:
    result.get(timeout=30)
    out["pickled"] = {"state": result.state}
except Exception as e:
    out["pickled"] = {"state": result.state, "error": f"{type(e).__name__}: {e}"}
out["stream"] = seen
print(json.dumps(out))
