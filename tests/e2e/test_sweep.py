"""The stale-kernel sweep end to end: real agents (process runtime), real worker, real presence."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from typer.testing import CliRunner

from sokovan.presence import judge, presence_key
from sokovan.types import (
    HealthCheckStatus,
    RunId,
    RunItemRecord,
    RunStatus,
    SessionId,
    SessionStatus,
)
from tasks.cli import app as cli_app
from tests.agents import set_fault
from tests.cluster import Cluster, kernel_processes, kernel_rows, running_cluster
from tests.workers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SWEEP = "sweep_stale_kernels"
TERMINATE = "terminate_sessions"
# Small enough to keep the test short, large enough that a kernel refreshed every
# PRESENCE_INTERVAL never looks stale on a loaded machine (stamps are whole seconds).
STALE_AFTER = 4.0
PRESENCE_INTERVAL = 0.5


def presence_of(c: Cluster, kernel_id: object) -> HealthCheckStatus | None:
    """The presence verdict the sweep would read now, against the server's clock."""
    url = c.senv.settings.effective_presence_url
    client = sync_redis.Redis.from_url(url, decode_responses=True)
    try:
        seconds, micros = client.time()
        fields = client.hgetall(presence_key(str(kernel_id)))
    finally:
        client.close()
    verdict = judge(
        {str(k): str(v) for k, v in fields.items()}, seconds + micros / 1_000_000, STALE_AFTER
    )
    return None if verdict is None else verdict.presence


def wait_stale(c: Cluster, kernel_ids: Iterable[object]) -> None:
    ids = list(kernel_ids)
    wait_for(
        lambda: all(presence_of(c, k) == HealthCheckStatus.STALE for k in ids),
        timeout=60,
        what=f"presence of {ids} to go stale",
    )


def sweep(c: Cluster) -> dict[str, Any]:
    """One sweep run, sent exactly as a beat tick sends it."""
    answer: dict[str, Any] = c.send("sokovan.handler.run", handler=SWEEP, trigger="beat")
    assert answer.get("run_id"), answer
    return answer


def items_by_kernel(c: Cluster, run_id: int) -> dict[str, RunItemRecord]:
    return {i.item_id: i for i in c.ledger.items(RunId(run_id))}


def running_sessions(c: Cluster, *request: dict[str, Any]) -> list[SessionId]:
    sids = [c.create(**r) for r in request]
    for sid in sids:
        s = c.wait_status(
            sid, SessionStatus.RUNNING, SessionStatus.TERMINATING, SessionStatus.TERMINATED
        )
        assert s.status == SessionStatus.RUNNING, c.repo.session_status_data(sid)
    return sids


def show_run(c: Cluster, run_id: int, monkeypatch: pytest.MonkeyPatch) -> str:
    """`sokovan runs show RUN_ID` against the test's database."""
    for key, value in c.senv.env.items():
        if key.startswith("SOKOVAN_"):
            monkeypatch.setenv(key, value)
    result = CliRunner().invoke(cli_app, ["runs", "show", str(run_id)])
    assert result.exit_code == 0, result.output
    return result.output


@dataclass(frozen=True)
class Suspects:
    """The sessions and kernels of the sweep scenario, ids as strings."""

    d_sid: SessionId  # two kernels: `dead` on a1, `sibling` on a2
    others: tuple[SessionId, ...]  # the sessions of n, e, a and h
    dead: str
    sibling: str
    n: str  # presence stopped; a1 answers None to check_running
    e: str  # presence stopped; a2's check_running raises
    a: str  # presence stopped; still running
    h: str  # healthy

    @property
    def stale(self) -> list[str]:
        return [self.dead, self.n, self.e, self.a]

    @property
    def survivors(self) -> list[str]:
        return [self.n, self.e, self.a, self.h]


async def arrange_suspects(c: Cluster) -> Suspects:
    """Six RUNNING kernels, faults set, one process killed, the suspects' presence stale."""
    d_sid, *others = running_sessions(
        c,
        {"name": "d", "kernels": 2, "cluster_mode": "multi-node", "agents": ["a1", "a2"]},
        {"name": "n", "agents": ["a1"]},
        {"name": "e", "agents": ["a2"]},
        {"name": "a", "agents": ["a1"]},
        {"name": "h", "agents": ["a2"]},
    )
    on_agent = {str(k.agent_id): str(k.id) for k in c.session(d_sid).kernels}
    n, e, a, h = (str(c.session(s).kernels[0].id) for s in others)
    k = Suspects(d_sid, tuple(others), on_agent["a1"], on_agent["a2"], n, e, a, h)
    url = c.senv.settings.redis_url
    await set_fault(url, "a1", {"op": "stop_presence", "kernels": [n, a]})
    await set_fault(url, "a2", {"op": "stop_presence", "kernels": [e]})
    await set_fault(
        url, "a1", {"op": "answer", "method": "check_running", "value": None, "kernels": [n]}
    )
    await set_fault(
        url, "a2", {"op": "fail", "method": "check_running", "message": "boom", "kernels": [e]}
    )
    victim = kernel_processes(k.dead)
    assert len(victim) == 1
    victim[0].kill()
    wait_stale(c, k.stale)
    assert presence_of(c, h) == HealthCheckStatus.HEALTHY
    return k


def assert_only_the_dead_reaped(c: Cluster, k: Suspects) -> None:
    """The dead kernel and, via the terminate handler, its session; nothing else."""
    assert c.session(k.d_sid).status in (SessionStatus.TERMINATING, SessionStatus.TERMINATED)
    d = c.wait_status(k.d_sid, SessionStatus.TERMINATED)
    assert d.status_info == "ABNORMAL_TERMINATION"
    rows = kernel_rows(c.senv, [k.dead, k.sibling, *k.survivors])
    assert rows[k.dead] == ("TERMINATED", "STALE_KERNEL")
    assert rows[k.sibling] == ("TERMINATED", "ABNORMAL_TERMINATION")
    assert kernel_processes(k.dead) == [] and kernel_processes(k.sibling) == []
    for kid in k.survivors:
        assert rows[kid][0] == "RUNNING", (kid, rows[kid])
        assert len(kernel_processes(kid)) == 1, f"kernel {kid} lost its process"
    for sid in k.others:
        assert c.session(sid).status == SessionStatus.RUNNING
    terminate_runs = c.ledger.list_runs(TERMINATE)
    assert any(r.trigger == "event" and str(k.d_sid) in (r.scope or []) for r in terminate_runs), (
        terminate_runs
    )
    destroyed = {
        i.item_id for r in terminate_runs for i in c.ledger.items(r.id) if i.ok and not i.skipped
    }
    assert destroyed == {k.sibling}


def assert_evidence(c: Cluster, run_id: RunId, k: Suspects) -> None:
    """One ledger row per suspect with both stages' evidence and the verdict."""
    run = c.ledger.get_run(run_id)
    assert (run.handler, run.trigger, run.requested) == (SWEEP, "beat", 6)
    items = items_by_kernel(c, run.id)
    assert set(items) == set(k.stale), "only suspects get a row; healthy kernels do not"
    for kid in k.stale:
        assert items[kid].evidence["presence"] == "STALE"
        assert isinstance(items[kid].evidence["last_presence"], float)
    dead, n, e, a = (items[kid] for kid in k.stale)
    assert dead.evidence["check_running"] == "False" and dead.evidence["verdict"] == "dead"
    assert dead.ok and dead.agent_id == "a1"
    assert n.evidence["check_running"] == "None" and n.skipped
    assert e.evidence["check_running"].startswith("error:") and e.skipped
    assert "boom" in e.evidence["check_running"]
    assert a.evidence["check_running"] == "True" and a.evidence["verdict"] == "alive" and a.ok
    assert (run.succeeded, run.failed, run.skipped) == (4, 0, 2)


async def test_sweep_reaps_only_kernels_their_agent_confirms_dead(
    tmp_path: Path, valkey_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SC-TE-INT-001 and SC-KH-INT-001 end to end.

    Given six RUNNING kernels on two agents (process runtime): a 2-kernel session D
    (dead kernel on a1, sibling on a2); kernels N (presence stopped, a1 answers None to
    check_running), E (presence stopped, a2's check_running raises), A (presence stopped,
    still running) and H (healthy).
    When D's kernel process is killed, presence of D/N/E/A has gone stale, and a sweep
    run is sent as beat sends it,
    then only D's dead kernel is TERMINATED (STALE_KERNEL); session D goes TERMINATING
    (ABNORMAL_TERMINATION) and the terminate handler destroys its sibling, ending
    TERMINATED with no process left; N, E, A and H stay RUNNING with their processes;
    the run ends `partial` with N and E counted unverified in its note (SC-CV-005); the run
    ledger and `sokovan runs show` carry the evidence of both stages per suspect."""
    async with running_cluster(
        tmp_path,
        valkey_url,
        settings={"presence_stale_after": str(STALE_AFTER)},
        presence_interval=PRESENCE_INTERVAL,
    ) as c:
        k = await arrange_suspects(c)

        answer = sweep(c)

        # N and E could not be verified: the run says so (SC-CV-005), it did not succeed.
        assert answer["status"] == RunStatus.PARTIAL, answer
        assert "1 stale kernel(s) terminated" in answer["note"]
        assert "2 kernel(s) unverified" in answer["note"]
        assert_only_the_dead_reaped(c, k)
        assert_evidence(c, RunId(answer["run_id"]), k)
        shown = show_run(c, answer["run_id"], monkeypatch)
        assert f"run {answer['run_id']}  {SWEEP}  trigger=beat" in shown
        for kid in k.stale:
            assert kid in shown
        assert '"verdict": "dead"' in shown and '"check_running": "False"' in shown
        assert '"check_running": "None"' in shown and '"verdict": "alive"' in shown


async def test_sweep_brake_kills_nothing_when_most_kernels_look_stale(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-TE-INT-001 / SC-KH-INT-001 with the brake: a presence outage is not a mass death.

    Given four RUNNING kernels and a brake from four kernels up that reaps nothing while it
    is engaged (SOKOVAN_SWEEP_BRAKE_REAP_SHARE=0; SC-CV-010's bounded reaping is covered in
    test_convergence_sweep), when every agent stops writing presence and one kernel's
    process is really dead, a sweep kills nothing: all four stay RUNNING and the run's note
    says the brake held and why.
    Once presence is back, the next sweep reaps the dead kernel alone."""
    async with running_cluster(
        tmp_path,
        valkey_url,
        settings={
            "presence_stale_after": str(STALE_AFTER),
            "sweep_brake_min_kernels": "4",
            "sweep_brake_reap_share": "0",
        },
        presence_interval=PRESENCE_INTERVAL,
    ) as c:
        sids = running_sessions(
            c, *({"name": f"s{i}", "agents": [f"a{i % 2 + 1}"]} for i in range(4))
        )
        kids = [str(c.session(s).kernels[0].id) for s in sids]
        for agent_id in c.agents.ids:
            await set_fault(c.senv.settings.redis_url, agent_id, {"op": "stop_presence"})
        kernel_processes(kids[0])[0].kill()
        wait_stale(c, kids)

        answer = sweep(c)

        assert "brake" in answer["note"] and "presence outage suspected" in answer["note"]
        assert "0 stale kernel(s) terminated" in answer["note"]
        rows = kernel_rows(c.senv, kids)
        assert all(status == "RUNNING" for status, _ in rows.values()), rows
        assert all(c.session(s).status == SessionStatus.RUNNING for s in sids)
        braked = c.ledger.get_run(RunId(answer["run_id"]))
        assert braked.note == answer["note"]
        assert braked.skipped == 4 and braked.succeeded == 0
        assert braked.status == RunStatus.HELD

        for agent_id in c.agents.ids:
            await set_fault(c.senv.settings.redis_url, agent_id, {"op": "resume_presence"})
        wait_for(
            lambda: all(presence_of(c, k) == HealthCheckStatus.HEALTHY for k in kids[1:]),
            timeout=60,
            what="presence of the live kernels to be fresh again",
        )
        after = sweep(c)

        assert "1 stale kernel(s) terminated" in after["note"], after
        assert "brake" not in after["note"]
        rows = kernel_rows(c.senv, kids)
        assert rows[kids[0]] == ("TERMINATED", "STALE_KERNEL")
        assert all(rows[k][0] == "RUNNING" for k in kids[1:]), rows
        c.wait_status(sids[0], SessionStatus.TERMINATED)
        for sid in sids[1:]:
            assert c.session(sid).status == SessionStatus.RUNNING
