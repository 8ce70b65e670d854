"""What a launch burst did over time: its runs, its create tasks, CPU per process."""

from __future__ import annotations

import os
import re
from datetime import datetime

import psutil

from bench.harness import Stack


def cpu_seconds(st: Stack) -> dict[str, float]:
    """CPU seconds used so far by the worker's processes, the agents and this process."""
    out: dict[str, float] = {}
    procs = {"bench": os.getpid()}
    for n, pid in enumerate(st.agents.pids, 1):
        procs["agents" if n == 1 else f"agents {n}"] = pid
    if st.worker is not None:
        procs["worker"] = st.worker.proc.pid
        for child in psutil.Process(st.worker.proc.pid).children(recursive=True):
            procs[f"worker child {child.pid}"] = child.pid
    for name, pid in procs.items():
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        out[name] = times.user + times.system
    return out


def print_runs(st: Stack, since: float) -> None:
    """Launch runs that started after `since`: when, how long, how many kernels."""
    print("run timeline (s after the first send):")
    for run in reversed(st.ledger.list_runs(limit=200)):
        began = run.started_at.timestamp() - since
        if began < 0 or run.handler not in ("pull_images", "start_sessions"):
            continue
        took = "running" if run.duration is None else f"{run.duration:6.2f}"
        print(f"  {began:7.2f} {took:>8} {run.handler:<15} {run.trigger:<6} req {run.requested}")
    if st.worker is None:
        return
    done = re.findall(
        r"\[([\d:, -]+): INFO/(\S+)\] Task sokovan\.agent\.create_kernels\[\S+\] "
        r"succeeded in ([\d.]+)s",
        st.worker.output(),
    )
    per_process: dict[str, list[float]] = {}
    for _, process, took in done:
        per_process.setdefault(process, []).append(float(took))
    for process, times in sorted(per_process.items()):
        print(f"  {process}: {len(times)} create_kernels task(s), {sum(times):.2f} s in all")
    # The worker logs local time without a zone; this process reads it on the same clock.
    received = [
        t
        for t in (
            datetime.strptime(at, "%Y-%m-%d %H:%M:%S,%f").timestamp() - since  # noqa: DTZ007
            for at in re.findall(
                r"\[([\d:, -]+): INFO/MainProcess\] Task sokovan\.agent\.create_kernels\[\S+\] "
                r"received",
                st.worker.output(),
            )
        )
        if t > 0
    ]
    if received:
        print(f"  create_kernels tasks taken from {min(received):.2f} to {max(received):.2f} s")
