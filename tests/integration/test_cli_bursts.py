"""SC-OP-004: `session create --count N` through the batch task; every id printed."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from sokovan.types import SessionId, SessionStatus
from tests.cluster import IMAGE, Cluster, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SOKOVAN = str(Path(sys.executable).parent / "sokovan")
ONE_CPU = ["--slot", "cpu=1", "--slot", "mem=1m"]


def cli(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SOKOVAN, *args], env=c.senv.env, capture_output=True, text=True, timeout=200, check=False
    )


async def test_sc_op_004_count_with_pending_prints_every_session(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-OP-004: Given one agent with room for 2 one-CPU sessions, `session create --count 4
    --json` sends one batch message, prints all 4 sessions (2 RUNNING, 2 PENDING with queue
    positions 1 and 2) and exits 0; in text, `--count 3` prints a line for each of the 3."""
    async with running_cluster(
        tmp_path, valkey_url, agents=1, runtime="sim", extra_args=["--cpu", "2"]
    ) as c:
        done = cli(c, "session", "create", "--image", IMAGE, *ONE_CPU, "--count", "4", "--json")
        assert done.returncode == 0, done.stderr
        sessions = json.loads(done.stdout)["sessions"]
        assert sorted(s["status"] for s in sessions) == ["PENDING"] * 2 + ["RUNNING"] * 2
        pending = [s for s in sessions if s["status"] == "PENDING"]
        assert sorted(s["queue_position"] for s in pending) == [1, 2], pending
        stored = {str(s.id) for s in c.repo.sessions_in(list(SessionStatus))}
        assert {s["session_id"] for s in sessions} == stored
        pulls = c.ledger.list_runs(handler="pull_images", limit=10)
        assert [r.requested for r in pulls] == [2], pulls  # one batch: one pull run

        more = cli(c, "session", "create", "--image", IMAGE, *ONE_CPU, "--count", "3")
        assert more.returncode == 0, more.stderr
        lines = more.stdout.strip().splitlines()
        assert len(lines) == 3 and all(" PENDING " in line for line in lines), lines
        for line in lines:
            sid = SessionId(uuid.UUID(line.split()[1]))
            assert c.session(sid).status == SessionStatus.PENDING
