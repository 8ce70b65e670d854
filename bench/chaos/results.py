"""What the chaos soak was asked to do, what it measured, and its rows of figures."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos.invariants import Check
from bench.chaos.rig import FAULT_KINDS, SOAK_SETTINGS, Fault
from bench.chaos.workload import TRACK_EVERY, Tracked, percentile
from bench.harness import load_average, machine


@dataclass(frozen=True)
class SoakOptions:
    """What one soak does; `faults` fixes the order (one of each by default in tests)."""

    minutes: float = 10.0
    seed: int = 1
    agents: int = 3
    calm: float = 60.0
    every: float = 1.5
    cap: int = 12
    append_only: bool = True
    faults: tuple[str, ...] | None = None
    gap: tuple[float, float] = (20.0, 40.0)
    keep: Path | None = None


@dataclass
class SoakResult:
    """Everything the soak measured."""

    options: SoakOptions
    checks: list[Check]
    faults: list[Fault]
    tracked: list[Tracked]
    killed: int
    lost: int
    chaos_seconds: float
    began: float
    settle: float | None
    root: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def report(result: SoakResult) -> list[tuple[str, str, str]]:
    """(name, result, figure) rows: the invariants, time to settle, faults and the workload."""
    rows: list[tuple[str, str, str]] = []
    for c in result.checks:
        rows.append(
            (
                c.name,
                "ok" if c.ok else "FAILED",
                c.figure + (f"; {c.detail}" if c.detail and not c.ok else ""),
            )
        )
    calm = result.options.calm
    if result.settle is None:
        rows.append(("time to settle after the last fault", "FAILED", f"not within {calm:g} s"))
    else:
        rows.append(
            (
                "time to settle after the last fault",
                "ok",
                f"{result.settle:.1f} s (limit {calm:g} s)",
            )
        )
    rows.extend(_fault_rows(result.faults))
    rows.extend(_load_rows(result))
    return rows


def _fault_rows(faults: list[Fault]) -> list[tuple[str, str, str]]:
    rows = []
    for kind in FAULT_KINDS:
        mine = [f for f in faults if f.kind == kind]
        back = [f.back_at - f.killed_at for f in mine if f.back_at is not None]
        failed = [f for f in mine if f.back_at is None]
        figure = f"{len(mine)} SIGKILLed and restarted"
        if back:
            figure += f", back in {statistics.median(back):.1f} s (median), {max(back):.1f} s (max)"
        if kind == "agent" and mine:
            figure += f" ({', '.join(f.target for f in mine)})"
        if failed:
            figure += f"; restart failed {len(failed)}x: {failed[0].error}"
        rows.append((f"fault: {kind}", "FAILED" if failed or not mine else "ok", figure))
    return rows


def _load_rows(result: SoakResult) -> list[tuple[str, str, str]]:
    tracked, minutes = result.tracked, max(result.chaos_seconds / 60, 1e-9)
    order = ", ".join(f"{f.killed_at - result.began:.0f} s {f.target}" for f in result.faults)
    acked = [t for t in tracked if t.acked]
    unanswered = [t for t in tracked if not t.acked]
    running = [t.running_at - t.requested_at for t in acked if t.running_at is not None]
    asked = [t for t in acked if t.terminate_at is not None]
    ended = [t.ended_at - t.terminate_at for t in asked if t.ended_at and t.terminate_at]
    dead = [t for t in acked if t.died_at is not None]
    reaped = [t.ended_at - t.died_at for t in dead if t.ended_at and t.died_at]
    return [
        ("workload: chaos phase", "", f"{result.chaos_seconds:.0f} s, faults at {order}"),
        (
            "workload: sessions created / min",
            "",
            f"{len(acked) / minutes:.1f} ({len(acked)} acknowledged, "
            f"{len(unanswered)} requests without an answer{_when(unanswered, result.began)})",
        ),
        (
            "workload: sessions RUNNING / min",
            "",
            f"{len(running) / minutes:.1f} ({len(running)} seen RUNNING)",
        ),
        (
            "workload: sessions terminated / min",
            "",
            f"{len(ended) / minutes:.1f} ({len(ended)} of {len(asked)} terminates acknowledged)",
        ),
        (
            "workload: kernels dead behind the scheduler's back",
            "",
            f"{result.killed} SIGKILLed, {result.lost} with their agent; "
            f"{len(reaped)} of {len(dead)} sessions ended by the scheduler",
        ),
        ("latency: create -> RUNNING", "", _spread(running)),
        ("latency: terminate -> TERMINATED", "", _spread(ended)),
        ("latency: kernel died -> session ended", "", _spread(reaped)),
    ]


def _when(requests: list[Tracked], began: float) -> str:
    """`: sent at 67 s, 70 s (no answer within 30 s)` for the first few."""
    if not requests:
        return ""
    shown = ", ".join(f"{t.requested_at - began:.0f} s" for t in requests[:5])
    return f": sent at {shown} ({requests[0].answer})"


def _spread(values: list[float]) -> str:
    p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
    if p50 is None or p95 is None:
        return "none measured"
    spread = f"p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(values):.2f} s"
    return f"{spread} (n={len(values)}; statuses read every {TRACK_EVERY:g} s)"


def print_report(result: SoakResult) -> None:
    o = result.options
    broker = "an append-only file" if o.append_only else "no persistence (a crash loses the queue)"
    print(f"\nSC-CV-007 chaos soak on {machine()}")
    print(f"seed {o.seed}, {o.agents} agents, Valkey with {broker}, calm {o.calm:g} s")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in SOAK_SETTINGS.items()))
    rows = report(result)
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'invariant / figure':<{width}}{'result':<8}figure")
    for name, verdict, figure in rows:
        print(f"{name:<{width}}{verdict:<8}{figure}")
    held = sum(1 for c in result.checks if c.ok)
    print(f"{held} of {len(result.checks)} invariants hold; {load_average()}")
    if result.root is not None:
        print(f"logs and data kept in {result.root}")
