"""Reclaim end to end (SC-RE-001..005): a real worker and beat, reference agents whose process
kernels are idle (`sleep`) or busy (a CPU loop) and write their utilization to Valkey."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sokovan import constants as C
from sokovan.types import RunItemRecord, RunStatus, SessionId, SessionStatus
from tests.cluster import Cluster, running_cluster
from tests.workers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

RECLAIM = "reclaim_sessions"
SOKOVAN = str(Path(sys.executable).parent / "sokovan")
ENDED = (SessionStatus.TERMINATING, SessionStatus.TERMINATED)
BUSY = {C.KERNEL_LOAD_ENV: "busy"}


@asynccontextmanager
async def reclaiming(
    tmp_path: Path, valkey_url: str, policy: Mapping[str, Any], stats_interval: float = 0.5
) -> AsyncIterator[Cluster]:
    """A cluster with beat running reclaim every second under the default group's policy."""
    settings = {
        "reclaim_policies": json.dumps({"default": dict(policy)}),
        "intervals": f"{RECLAIM}=1",
    }
    async with running_cluster(
        tmp_path,
        valkey_url,
        settings=settings,
        beat=True,
        extra_args=["--stats-interval", str(stats_interval)],
    ) as c:
        yield c


def cli(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """`sokovan ARGS` against the cluster's settings, as an operator types it."""
    return subprocess.run(
        [SOKOVAN, *args], env=c.senv.env, capture_output=True, text=True, timeout=120
    )


def start(c: Cluster, environ: Mapping[str, str] | None = None) -> SessionId:
    sid = c.create(environ=dict(environ or {}))
    c.wait_status(sid, SessionStatus.RUNNING)
    return sid


def items(c: Cluster, verdict_error: str) -> dict[str, RunItemRecord]:
    """Items of reclaim runs whose error starts with `verdict_error`, by session id."""
    found: dict[str, RunItemRecord] = {}
    for run in c.ledger.list_runs(RECLAIM, limit=500, finished=True):
        for item in c.ledger.items(run.id):
            if (item.error or "").startswith(verdict_error):
                found.setdefault(item.item_id, item)
    return found


def ended_with(c: Cluster, sid: SessionId, reason: str) -> None:
    s = c.wait_status(sid, *ENDED, timeout=60)
    assert s.status_info == reason, s
    c.wait_status(sid, SessionStatus.TERMINATED, timeout=60)


async def test_sc_re_001_lifetime_exceeded(tmp_path: Path, valkey_url: str) -> None:
    """SC-RE-001: a RUNNING session past max lifetime ends LIFETIME_EXCEEDED, its evidence
    naming the policy and the age; a younger session is untouched."""
    async with reclaiming(tmp_path, valkey_url, {"max_lifetime": 6}) as c:
        old = start(c)
        ended_with(c, old, C.LIFETIME_EXCEEDED_REASON)
        young = start(c)
        evidence = items(c, "reclaimed")[str(old)].evidence
        assert evidence["reason"] == C.LIFETIME_EXCEEDED_REASON
        assert evidence["policy"]["max_lifetime"] == 6
        assert evidence["age_sec"] >= 6
        assert c.session(young).status == SessionStatus.RUNNING


async def test_sc_re_002_idle_reaped_busy_and_touched_kept(tmp_path: Path, valkey_url: str) -> None:
    """SC-RE-002: Given an idle, a busy (CPU loop) and a touched idle session under a 4 s idle
    timeout, the idle one ends IDLE_TIMEOUT with the utilization read in its evidence; the
    busy and the touched ones stay RUNNING."""
    # An asleep kernel reads 0 %; a CPU loop reads more than 0.5 % even on a loaded machine.
    policy = {"idle_timeout": 4, "idle_threshold": 0.5}
    async with reclaiming(tmp_path, valkey_url, policy) as c:
        busy = start(c, BUSY)
        touched = start(c)
        idle = start(c)
        deadline = time.monotonic() + 60
        while c.session(idle).status not in ENDED and time.monotonic() < deadline:
            assert "session_id" in c.send("sokovan.session.touch", session_id=str(touched))
            await asyncio.sleep(1)
        ended_with(c, idle, C.IDLE_TIMEOUT_REASON)
        for _ in range(6):  # well past the idle timeout: still kept
            c.send("sokovan.session.touch", session_id=str(touched))
            await asyncio.sleep(1)
        assert c.session(busy).status == SessionStatus.RUNNING
        assert c.session(touched).status == SessionStatus.RUNNING
        evidence = items(c, "reclaimed")[str(idle)].evidence
        (pct,) = evidence["cpu_util_pct"].values()
        assert pct is not None and pct < 0.5
        assert str(busy) not in items(c, "")


async def test_sc_re_003_grace_after_start(tmp_path: Path, valkey_url: str) -> None:
    """SC-RE-003: with a 1 s max lifetime and an 8 s grace, nothing is reclaimed before 8 s."""
    async with reclaiming(tmp_path, valkey_url, {"max_lifetime": 1, "grace_period": 8}) as c:
        sid = start(c)
        started = c.session(sid).status_changed_at
        assert started is not None
        ended_with(c, sid, C.LIFETIME_EXCEEDED_REASON)
        evidence = items(c, "reclaimed")[str(sid)].evidence
        assert evidence["age_sec"] >= 8


async def test_sc_re_004_report_only(tmp_path: Path, valkey_url: str) -> None:
    """SC-RE-004: report-only records would-reclaim outcomes and terminates nothing; once the
    operator enforces the policy with `sokovan reclaim set default --enforce`, the session ends
    LIFETIME_EXCEEDED on a following run."""
    async with reclaiming(tmp_path, valkey_url, {"max_lifetime": 2, "report_only": True}) as c:
        sid = start(c)
        wait_for(lambda: str(sid) in items(c, "would reclaim"), timeout=60, what="a report")
        await asyncio.sleep(3)
        assert c.session(sid).status == SessionStatus.RUNNING
        evidence = items(c, "would reclaim")[str(sid)].evidence
        assert evidence["reason"] == C.LIFETIME_EXCEEDED_REASON
        done = cli(c, "reclaim", "set", "default", "--enforce", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["policy"] == {
            **evidence["policy"],
            "report_only": False,
        }
        ended_with(c, sid, C.LIFETIME_EXCEEDED_REASON)
        assert items(c, "reclaimed")[str(sid)].evidence["policy"]["report_only"] is False
        shown = json.loads(cli(c, "reclaim", "policies", "--json").stdout)
        assert shown["policies"]["default"]["source"] == "set"


def held_runs(c: Cluster) -> list[str]:
    return [r.note or "" for r in c.ledger.list_runs(RECLAIM, status=str(RunStatus.HELD))]


async def test_sc_re_005_brake_share_holds(tmp_path: Path, valkey_url: str) -> None:
    """SC-RE-005: Given three sessions idle past the timeout at once (reclaim paused while
    they start, so none goes alone first) and a brake share of 0.5, when reclaim resumes, the
    run is held and none ends."""
    policy = {"idle_timeout": 3, "brake_share": 0.5}
    async with reclaiming(tmp_path, valkey_url, policy) as c:
        c.ledger.set_paused(RECLAIM, True, "sessions starting")
        sids = [start(c) for _ in range(3)]
        await asyncio.sleep(4)
        c.ledger.set_paused(RECLAIM, False)
        wait_for(lambda: any("brake share" in n for n in held_runs(c)), timeout=60, what="a hold")
        await asyncio.sleep(3)
        assert all(c.session(s).status == SessionStatus.RUNNING for s in sids)
        assert set(map(str, sids)) <= set(items(c, "braked"))


async def test_sc_re_005_brake_when_utilization_missing(tmp_path: Path, valkey_url: str) -> None:
    """SC-RE-005: no utilization written for any kernel: held, nothing reclaimed."""
    policy = {"idle_timeout": 2, "max_lifetime": 2}
    async with reclaiming(tmp_path, valkey_url, policy, stats_interval=3600) as c:
        sid = start(c)
        wait_for(lambda: any("missing" in n for n in held_runs(c)), timeout=60, what="a hold")
        await asyncio.sleep(3)
        assert c.session(sid).status == SessionStatus.RUNNING
