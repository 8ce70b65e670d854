"""The benchmarks at tiny sizes: they run, print every row, and never abort."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from bench import all as bench_all
from bench.harness import Figure, lost_note
from tests.workers import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240), pytest.mark.xdist_group("whole-cluster")]

ROWS = (
    "terminate 200 kernels / 10 agents",
    "sweep 2,000 kernels / 10 agents",
    "launch 20 sessions / 4 agents",
    "launch: p99 submit -> RUNNING, warm pool",
    "launch: p99 submit -> RUNNING, cold pool",
    "launch: p99 warm pool / no-keypair baseline",
    "launch: p99 warm pool, one message per session",
    "rpc: sequential calls/s",
    "rpc: 100 concurrent calls/s",
)


def bench_output(module: str, *args: str, timeout: float) -> str:
    """What `python -m <module> <args>` printed; it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_smoke_run_prints_every_benchmark_row_and_exits_0() -> None:
    """Given tiny sizes, when `python -m bench.all --smoke` runs, every row is printed."""
    out = bench_output("bench.all", "--smoke", timeout=220)
    for row in ROWS:
        assert row in out, f"missing row {row!r} in:\n{out}"
    assert "FAILED" not in out, out
    assert ", 0 failed;" in out
    assert "load average" in out
    assert "baseline lost" in out  # each side's losses are a printed figure, even when none


def test_a_benchmark_that_raises_becomes_a_failed_row() -> None:
    """A raising benchmark yields one FAILED row naming the error; nothing propagates."""

    async def boom() -> list[Figure]:
        raise RuntimeError("agents went away")

    rows = asyncio.run(bench_all._one("terminate", boom, 5.0))
    assert [r.failed for r in rows] == [True]
    assert rows[0].name == "bench.terminate: FAILED"
    assert "RuntimeError: agents went away" in rows[0].note


def test_a_benchmark_past_its_bound_becomes_a_failed_row() -> None:
    async def hang() -> list[Figure]:
        await asyncio.sleep(60)
        return []

    rows = asyncio.run(bench_all._one("sweep", hang, 0.05))
    assert rows[0].failed and "TimeoutError" in rows[0].note


def test_lost_calls_are_a_figure() -> None:
    assert lost_note("baseline", 5084, 10_000, "destroy calls", "to the 5 s timeout") == (
        "baseline lost 5,084 of 10,000 destroy calls to the 5 s timeout"
    )
    assert lost_note("ours", 0, 10_000, "destroy calls") == "ours lost none of 10,000 destroy calls"


def test_every_size_names_every_benchmark() -> None:
    """`make bench` (quick sizes) once lost its rpc row to a missing size: each set of
    sizes names every benchmark `bench.all` runs, so no row fails for want of arguments."""
    for sizes in (bench_all.QUICK, bench_all.SMOKE, bench_all.FULL):
        assert set(sizes) == {"terminate", "sweep", "launch", "rpc"}
        assert all(sizes[name] for name in sizes)


def test_three_runs_give_each_figure_its_median_and_keep_every_failure() -> None:
    """`--runs 3`: a row per figure with the median of the runs that measured it and each
    run's value in its note; a benchmark that failed in one run stays a FAILED row naming it."""
    nan = float("nan")
    runs = [
        [Figure("terminate", 5.0, 4.0, "s", note="n1"), Figure("rpc: calls/s", 10, 9, "1/s")],
        [Figure("terminate", 3.0, 4.5, "s", note="n2"), Figure("rpc: calls/s", 12, 9, "1/s")],
        [
            Figure("terminate", 4.0, 4.2, "s", note="n3"),
            Figure.failure("bench.rpc", RuntimeError("agent gone")),
        ],
    ]

    rows = {f.name: f for f in bench_all.medians(runs)}

    assert (rows["terminate"].ours, rows["terminate"].baseline) == (4.0, 4.2)
    assert rows["terminate"].note.startswith("median of 3 run(s) (run 1: 5.000 / 4.000;")
    assert rows["terminate"].note.endswith("; n3")  # the median run's own note
    assert (rows["rpc: calls/s"].ours, rows["rpc: calls/s"].baseline) == (11.0, 9.0)
    failed = rows["bench.rpc: FAILED"]
    assert failed.failed and failed.note.startswith("in run(s) 3 of 3: RuntimeError: agent gone")
    assert "| — |" in bench_all.render([Figure("sweep: fds", 3, nan, "fds")], "full", 1, "h", 3)


def test_a_benchmark_at_two_sizes_names_the_size_in_its_side_rows() -> None:
    """FULL runs terminate and sweep at two sizes: their side rows would share a name."""
    rows = bench_all._labelled(
        "sweep",
        ["--kernels", "1000000", "--agents", "5000"],
        [
            Figure("sweep 1,000,000 kernels / 5000 agents", 1, 2, "s"),
            Figure("sweep: fds", 3, 4, "fds"),
        ],
    )

    assert [f.name for f in rows] == [
        "sweep 1,000,000 kernels / 5000 agents",
        "sweep: fds (1,000,000 kernels / 5,000 agents)",
    ]


def test_cancel_bench_prints_its_row_beside_the_single_message_baseline() -> None:
    """`python -m bench.cancel --sessions 50` ends 50 PENDING sessions both ways and prints
    one row, its ratio and the tasks each way sent, with nothing left uncancelled."""
    out = bench_output("bench.cancel", "--sessions", "50", timeout=200)
    assert "end 50 PENDING sessions: seconds" in out, out
    assert "FAILED" not in out, out
    assert "tasks sent: 1 batch message(s) against 50 single ones" in out, out
    assert "sessions left uncancelled: 0 (batch), 0 (single)" in out, out
