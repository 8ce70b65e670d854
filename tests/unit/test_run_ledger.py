"""The run ledger in SQL (built by the migrations): counts, dedupe, retention, aggregates,
their CLI and their Prometheus exposition."""

from __future__ import annotations

import os
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from sokovan.db.engine import create_engine, upgrade
from sokovan.db.ledger import RunLedger, closing_status, final_status
from sokovan.db.stats import RunStats, percentile
from sokovan.metrics import registry_for, serve
from sokovan.types import ItemOutcome, ResourceSlot, RunId, RunStatus, RunTrigger, utcnow
from tasks.cli import app as cli
from tests.conftest import free_port


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    eng = create_engine(f"sqlite:///{tmp_path / 'var' / 'sokovan.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def ledger(engine: sa.Engine) -> RunLedger:
    return RunLedger(engine)


def destroy(kernel: str, session: str, ok: bool = True, **extra: object) -> ItemOutcome:
    detail: dict[str, object] = {"session_id": session}
    if "slots" in extra:
        detail["occupied_slots"] = extra["slots"]
    return ItemOutcome(
        kernel,
        None if extra.get("skipped") else "a1",
        ok=ok,
        error=None if ok else str(extra.get("error", "boom")),
        detail=detail,
        skipped=bool(extra.get("skipped")),
    )


def finished_run(
    ledger: RunLedger,
    handler: str,
    outcomes: list[ItemOutcome],
    *,
    seconds: float = 1.0,
    operation: str | None = None,
    error: str | None = None,
) -> RunId:
    """A closed run with these outcomes that took `seconds`."""
    run_id = ledger.open_run(handler, RunTrigger.BEAT, requested=len(outcomes))
    if operation:
        ledger.update_run(run_id, operation=operation)
    ledger.record_items(run_id, outcomes)
    ledger.close_run(run_id, error=error)
    start = ledger.get_run(run_id).started_at
    ledger.update_run(run_id, finished_at=start + timedelta(seconds=seconds))
    return run_id


# Ledger basics --------------------------------------------------------------


def test_sc_rl_008_recording_an_item_twice_counts_it_once(ledger: RunLedger) -> None:
    """SC-RL-008: a redelivered batch records the same items again: stored and counted once."""
    run_id = ledger.open_run("terminate_sessions", RunTrigger.BEAT, requested=2)
    batch = [destroy("k1", "s1"), destroy("k2", "s1", ok=False)]

    assert ledger.record_items(run_id, batch) == 2
    assert ledger.record_items(run_id, batch) == 0
    record = ledger.close_run(run_id)

    assert record is not None and (record.succeeded, record.failed) == (1, 1)
    assert record.status == RunStatus.PARTIAL
    assert [i.item_id for i in ledger.items(run_id)] == ["k1", "k2"]
    assert ledger.close_run(run_id) is None  # a run closes once
    assert not ledger.finish_as(run_id, RunStatus.ABANDONED, "late")


@pytest.mark.parametrize(
    ("succeeded", "failed", "error", "status"),
    [
        (0, 0, None, RunStatus.SUCCEEDED),
        (3, 0, None, RunStatus.SUCCEEDED),
        (3, 1, None, RunStatus.PARTIAL),
        (0, 2, None, RunStatus.FAILED),
        (0, 0, "broker down", RunStatus.FAILED),
        (2, 0, "fan-out lost a task", RunStatus.PARTIAL),
    ],
)
def test_sc_rl_001_final_status_from_counts(
    succeeded: int, failed: int, error: str | None, status: RunStatus
) -> None:
    """SC-RL-001/003: how counts and an error summary decide a finished run's status."""
    assert final_status(succeeded, failed, error) == status


def test_sc_rl_008_abandoned_run_keeps_its_outcomes(ledger: RunLedger) -> None:
    """SC-RL-008: finishing a run as abandoned keeps and counts the items it recorded."""
    run_id = ledger.open_run("terminate_sessions", RunTrigger.BEAT, deadline_sec=0.001)
    ledger.record_items(run_id, [destroy("k1", "s1"), destroy("k2", "s1", skipped=True)])
    ledger.update_run(run_id, deadline_at=utcnow() - timedelta(seconds=1))

    assert [r.id for r in ledger.running_past_deadline()] == [run_id]
    assert ledger.finish_as(run_id, RunStatus.ABANDONED, "past its deadline")

    run = ledger.get_run(run_id)
    assert (run.status, run.succeeded, run.skipped, run.note) == (
        RunStatus.ABANDONED,
        1,
        1,
        "past its deadline",
    )
    assert [o.item_id for o in ledger.outcomes(run_id)] == ["k1", "k2"]
    assert ledger.running_past_deadline() == []


def test_sc_rl_008_late_outcomes_of_an_abandoned_run_never_count_twice(
    ledger: RunLedger,
) -> None:
    """SC-RL-008 (SC-RC-003): a task redelivered long after its run was abandoned reports
    kernels; they are kept in the abandoned run as evidence only, never counted: the next
    run re-planned every kernel the abandoned run had not recorded and counts it itself."""
    first = ledger.open_run("terminate_sessions", RunTrigger.BEAT)
    ledger.record_items(first, [destroy("k1", "s1")])
    assert ledger.finish_as(first, RunStatus.ABANDONED, "past its deadline")
    second = ledger.open_run("terminate_sessions", RunTrigger.BEAT)
    ledger.record_items(second, [destroy("k2", "s1"), destroy("k3", "s1")])
    ledger.close_run(second)

    late = [destroy("k2", "s1"), destroy("k3", "s1"), destroy("k4", "s1")]
    assert ledger.record_items(first, late) == 3
    ledger.recount(first)

    assert [o.item_id for o in ledger.outcomes(first)] == ["k1"]
    assert [(i.item_id, i.counted) for i in ledger.items(first)] == [
        ("k1", True),
        ("k2", False),
        ("k3", False),
        ("k4", False),
    ]
    assert ledger.get_run(first).succeeded == 1
    other = ledger.open_run("sweep_stale_kernels", RunTrigger.BEAT)
    assert ledger.record_items(other, [destroy("k2", "s1")]) == 1  # other handlers unaffected


def test_retention_prunes_old_finished_runs_only(ledger: RunLedger, engine: sa.Engine) -> None:
    """Runs older than the retention are deleted with their items; running ones stay."""
    old = finished_run(ledger, "terminate_sessions", [destroy("k1", "s1")])
    old_running = ledger.open_run("sweep_stale_kernels", RunTrigger.BEAT)
    recent = finished_run(ledger, "terminate_sessions", [destroy("k2", "s2")])
    long_ago = utcnow() - timedelta(days=40)
    for run_id in (old, old_running):
        ledger.update_run(run_id, started_at=long_ago)

    assert ledger.prune(utcnow() - timedelta(days=30)) == 1

    assert {r.id for r in ledger.list_runs(limit=10)} == {old_running, recent}
    with engine.connect() as conn:
        orphans = conn.execute(
            sa.text("SELECT count(*) FROM run_items WHERE run_id = :r"), {"r": old}
        )
        assert orphans.scalar() == 0


# SC-RL-010 aggregates --------------------------------------------------------


def test_sc_rl_010_per_session_aggregates(ledger: RunLedger) -> None:
    """SC-RL-010: per session, distinct kernels created / destroyed / failed / skipped, and the
    freed slots summed over destroyed kernels (a kernel without occupied_slots counts zero)."""
    s1, s2 = str(uuid.uuid4()), str(uuid.uuid4())
    finished_run(
        ledger,
        "start_sessions",
        [destroy("c1", s1), destroy("c2", s1), destroy("c3", s1, ok=False)],
        operation="create_kernels",
    )
    finished_run(
        ledger,
        "terminate_sessions",
        [
            destroy("c1", s1, slots={"cpu": "1", "mem": "1073741824"}),
            destroy("c2", s1, slots={"cpu": "2.5"}),
            destroy("k9", s1),  # no occupied_slots: zero
            destroy("k8", s1, ok=False),
            destroy("k7", s2, ok=False),
            destroy("k6", s2, skipped=True),
        ],
        operation="destroy_kernels",
    )
    # The next run destroys k8, which failed before: destroyed once, no longer failed.
    finished_run(
        ledger,
        "terminate_sessions",
        [destroy("k8", s1, slots={"cpu": "1", "mem": "1073741824"})],
        operation="destroy_kernels",
    )

    by_session = {s.session_id: s for s in RunStats(ledger.engine).sessions()}

    one = by_session[s1]
    assert (one.created, one.destroyed, one.failed, one.skipped) == (2, 4, 1, 0)
    assert one.freed_slots == ResourceSlot({"cpu": Decimal("4.5"), "mem": Decimal(2 * 1073741824)})
    two = by_session[s2]
    assert (two.created, two.destroyed, two.failed, two.skipped) == (0, 0, 1, 1)
    assert two.freed_slots == ResourceSlot()
    only = RunStats(ledger.engine).sessions([s2])
    assert [s.session_id for s in only] == [s2]


def test_sc_rl_010_per_handler_aggregates(ledger: RunLedger) -> None:
    """SC-RL-010: per handler, runs by status, items, failure rate and p50/p95 duration."""
    for seconds in range(1, 11):  # ten runs of 1..10 s, the last one partial
        outcomes = [destroy(f"k{seconds}", "s")]
        if seconds == 10:
            outcomes.append(destroy("bad", "s", ok=False))
        finished_run(ledger, "terminate_sessions", outcomes, seconds=float(seconds))
    finished_run(ledger, "sweep_stale_kernels", [], seconds=0.2)
    ledger.open_run("sweep_stale_kernels", RunTrigger.BEAT)  # still running: no duration

    stats = {h.handler: h for h in RunStats(ledger.engine).handlers()}

    term = stats["terminate_sessions"]
    assert (term.runs, term.items, term.succeeded, term.failed) == (10, 11, 10, 1)
    assert term.by_status == {"succeeded": 9, "partial": 1}
    assert term.failure_rate == pytest.approx(1 / 11)
    assert term.p50 == pytest.approx(5.0, abs=0.01)
    assert term.p95 == pytest.approx(10.0, abs=0.01)
    sweep = stats["sweep_stale_kernels"]
    assert sweep.runs == 2 and sweep.by_status == {"succeeded": 1, "running": 1}
    assert sweep.failure_rate == 0.0 and sweep.p50 == pytest.approx(0.2, abs=0.01)

    histograms = {h.handler: h for h in RunStats(ledger.engine).duration_histograms()}
    buckets = dict(histograms["terminate_sessions"].buckets)
    assert (buckets[1.0], buckets[5.0], buckets[15.0]) == (1, 5, 10)
    assert histograms["terminate_sessions"].total == pytest.approx(55.0, abs=0.05)


def test_sc_rl_010_percentile_nearest_rank() -> None:
    """SC-RL-010: p50/p95 use nearest rank; no runs, no percentile."""
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0


# Prometheus ------------------------------------------------------------------


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_sc_rl_010_prometheus_counters_from_the_ledger(ledger: RunLedger) -> None:
    """SC-RL-010: the collector exports runs, items, kernels, freed slots and durations, and
    its counters do not fall when retention prunes old runs."""
    sid = str(uuid.uuid4())
    old = finished_run(
        ledger,
        "terminate_sessions",
        [destroy("k1", sid, slots={"cpu": "2"}), destroy("k2", sid, ok=False)],
        operation="destroy_kernels",
        seconds=2.0,
    )
    ledger.set_paused("sweep_stale_kernels", True)
    registry = registry_for(
        ledger, RunStats(ledger.engine), ["terminate_sessions", "sweep_stale_kernels"]
    )

    first = scrape(generate_latest(registry).decode())

    term = (("handler", "terminate_sessions"),)
    assert first[("sokovan_runs_total", (*term, ("status", "partial")))] == 1
    assert first[("sokovan_run_items_total", (*term, ("result", "failed")))] == 1
    assert first[("sokovan_kernel_outcomes_total", (("outcome", "destroyed"),))] == 1
    assert first[("sokovan_freed_cpu_cores_total", ())] == 2
    assert first[("sokovan_run_duration_seconds_bucket", (*term, ("le", "5.0")))] == 1
    assert first[("sokovan_run_duration_seconds_count", term)] == 1
    assert first[("sokovan_handler_paused", (("handler", "sweep_stale_kernels"),))] == 1
    assert first[("sokovan_handler_runs_in_flight", term)] == 0

    ledger.update_run(old, started_at=utcnow() - timedelta(days=60))
    ledger.prune(utcnow() - timedelta(days=30))
    finished_run(ledger, "terminate_sessions", [destroy("k3", sid)], operation="destroy_kernels")

    second = scrape(generate_latest(registry).decode())

    assert second[("sokovan_runs_total", (*term, ("status", "partial")))] == 1
    assert second[("sokovan_runs_total", (*term, ("status", "succeeded")))] == 1
    assert second[("sokovan_run_items_total", (*term, ("result", "ok")))] >= 1
    assert second[("sokovan_kernel_outcomes_total", (("outcome", "destroyed"),))] >= 1
    assert second[("sokovan_run_duration_seconds_count", term)] >= 1


def test_sc_rl_010_metrics_served_over_http(ledger: RunLedger) -> None:
    """SC-RL-010: the exporter answers /metrics over HTTP beside Flower's own metrics."""
    finished_run(ledger, "terminate_sessions", [destroy("k1", "s")])
    port = free_port()
    server, thread = serve(ledger, RunStats(ledger.engine), port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            body = reply.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    samples = scrape(body)
    key = (
        "sokovan_runs_total",
        (("handler", "terminate_sessions"), ("status", "succeeded")),
    )
    assert samples[key] == 1


# CLI -------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for key in list(os.environ):
        if key.startswith("SOKOVAN_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOKOVAN_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("SOKOVAN_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SOKOVAN_BUDGETS", "terminate_sessions=500")
    return CliRunner()


def test_sc_rl_009_cli_pause_resume_list(cli_env: CliRunner, ledger: RunLedger) -> None:
    """SC-RL-009: `sokovan handlers pause|resume|list` set and show the persisted state."""
    running = ledger.open_run("terminate_sessions", RunTrigger.BEAT)
    done = finished_run(ledger, "terminate_sessions", [destroy("k1", "s")])

    paused = cli_env.invoke(cli, ["handlers", "pause", "terminate_sessions", "--reason", "ops"])
    assert paused.exit_code == 0, paused.output
    assert ledger.is_paused("terminate_sessions")
    listed = cli_env.invoke(cli, ["handlers", "list"])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if line.startswith("terminate_"))
    assert row.split()[:5] == ["terminate_sessions", "paused", "500", f"#{running}", f"#{done}"]
    assert row.endswith("ops")

    resumed = cli_env.invoke(cli, ["handlers", "resume", "terminate_sessions"])
    assert resumed.exit_code == 0 and not ledger.is_paused("terminate_sessions")
    unknown = cli_env.invoke(cli, ["handlers", "pause", "no_such_handler"])
    assert unknown.exit_code != 0


def test_sc_rl_010_cli_runs_list_show_stats(cli_env: CliRunner, ledger: RunLedger) -> None:
    """SC-RL-010: `sokovan runs list|show|stats` print runs, items and aggregates."""
    sid = str(uuid.uuid4())
    run_id = finished_run(
        ledger,
        "terminate_sessions",
        [destroy("k1", sid, slots={"cpu": "1", "mem": "1024"}), destroy("k2", sid, ok=False)],
        operation="destroy_kernels",
        seconds=3.0,
    )

    listed = cli_env.invoke(cli, ["runs", "list"])
    assert listed.exit_code == 0, listed.output
    row = listed.output.splitlines()[1].split()
    assert row[:8] == [str(run_id), "terminate_sessions", "beat", "partial", "2", "1", "1", "0"]
    assert row[-1] == "3.00s"
    shown = cli_env.invoke(cli, ["runs", "show", str(run_id)])
    assert shown.exit_code == 0, shown.output
    assert "requested=2 succeeded=1 failed=1 skipped=0" in shown.output and "boom" in shown.output
    stats = cli_env.invoke(cli, ["runs", "stats", "--since", "24h"])
    assert stats.exit_code == 0, stats.output
    line = next(x for x in stats.output.splitlines() if x.startswith("terminate_"))
    assert line.split() == (
        ["terminate_sessions", "1", "partial=1", "2", "1", "1", "0", "50.0%", "3.00s", "3.00s"]
    )
    per_session = cli_env.invoke(cli, ["runs", "stats", "--session", sid])
    assert per_session.exit_code == 0, per_session.output
    assert per_session.output.splitlines()[1].split() == [sid, "0", "1", "1", "0", "cpu=1,mem=1024"]
    bad = cli_env.invoke(cli, ["runs", "stats", "--since", "yesterday"])
    assert bad.exit_code != 0


def test_sc_cv_005_a_run_with_undecided_targets_closes_partial_not_succeeded() -> None:
    """SC-CV-005: `partial` marks undecided targets; held and failures still win over it."""
    assert closing_status(5, 0, None, held=False, partial=True) is RunStatus.PARTIAL
    assert closing_status(0, 0, None, held=False, partial=True) is RunStatus.PARTIAL
    assert closing_status(5, 0, None, held=False, partial=False) is RunStatus.SUCCEEDED
    assert closing_status(0, 0, None, held=True, partial=True) is RunStatus.HELD
    assert closing_status(0, 2, None, held=False, partial=True) is RunStatus.FAILED
