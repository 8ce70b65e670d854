"""Every benchmark at sizes that finish in a few minutes; writes bench/results.md.

    python -m bench.all [--full | --smoke] [--runs N]

`--full` uses the sizes of the performance targets (terminate 10,000 kernels over 100 agents
and 50,000 over 5,000; sweep 1,000,000 kernels over 1,000 and over 5,000 agents; launch 1,000
sessions); about 20 minutes a run, most of it seeding a million kernels twice. `--smoke` runs
every benchmark at tiny sizes in seconds (run by `make test`, so the benchmarks cannot rot)
and writes nothing. `--runs N` runs the whole set N times and writes each figure's median,
with every run's value in the notes. A benchmark that raises becomes a FAILED row and the
others go on; the run exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench import launch, recovery, rpc, sweep, terminate
from bench.harness import Figure, load_average, machine, print_figures

RESULTS = Path(__file__).with_name("results.md")

# Each benchmark's argument lists: one run of it per list.
Sizes = dict[str, list[list[str]]]
QUICK: Sizes = {
    "terminate": [["--kernels", "2000", "--agents", "100"]],
    "sweep": [["--kernels", "20000", "--agents", "100"]],
    "launch": [["--sessions", "200", "--agents", "20"]],
    "rpc": [["--sequential", "1000", "--concurrent", "2000"]],
}
SMOKE: Sizes = {
    "terminate": [["--kernels", "200", "--agents", "10"]],
    "sweep": [["--kernels", "2000", "--agents", "10"]],
    "launch": [["--sessions", "20", "--agents", "4"]],
    "rpc": [["--sequential", "200", "--concurrent", "400"]],
}
FULL: Sizes = {
    "terminate": [
        ["--kernels", "10000", "--agents", "100"],
        ["--kernels", "50000", "--agents", "5000"],
    ],
    "sweep": [
        ["--kernels", "1000000", "--agents", "1000"],
        ["--kernels", "1000000", "--agents", "5000"],
    ],
    "launch": [["--sessions", "1000", "--agents", "20"]],
    "rpc": [["--sequential", "1000", "--concurrent", "2000"]],
}
# Bound of one benchmark, so a hung one becomes a FAILED row instead of a hung run.
LIMIT_SEC = {"smoke": 120.0, "quick": 1200.0, "full": 2400.0}


async def rpc_figures(argv: list[str]) -> list[Figure]:
    args = rpc.parse_args(argv)
    async with rpc.in_process_agent() as addr:
        results = await rpc.measure(addr, args)
    ours, bare = results["CallosumAgentClient"], results["bare callosum Peer"]
    return [
        Figure("rpc: sequential calls/s", ours["sequential"], bare["sequential"], "1/s", "higher"),
        Figure(
            "rpc: 100 concurrent calls/s", ours["concurrent"], bare["concurrent"], "1/s", "higher"
        ),
    ]


def _cell(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:,.3f}"


def render(figures: Sequence[Figure], sizes: str, seconds: float, host: str, runs: int = 1) -> str:
    flags = (" --full" if sizes == "full" else "") + (f" --runs {runs}" if runs > 1 else "")
    medians_of = f"; each figure the median of {runs} runs" if runs > 1 else ""
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python -m bench.all{flags}` "
        f"on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {seconds:.0f} s "
        f"({sizes} sizes{medians_of}).",
        "Ratio is ours / baseline, both measured in the same run on the same agents.",
        "Times: lower is better; rates (1/s): higher is better.",
        "The machine may be shared with other processes; the load average is noted at the end.",
        "",
        "| figure | ours | baseline | ratio | unit | machine |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for f in figures:
        lines.append(
            f"| {f.name} | {_cell(f.ours)} | {_cell(f.baseline)} | {_cell(f.ratio)} "
            f"| {f.unit} | {host} |"
        )
    notes = [f"- {f.name}: {f.note}" for f in figures if f.note]
    if notes:
        lines += ["", "Notes:", "", *notes]
    lines += ["", f"Machine at the end: {machine()}; {load_average()}.", ""]
    return "\n".join(lines)


async def _one(name: str, go: Callable[[], Awaitable[list[Figure]]], limit: float) -> list[Figure]:
    """One benchmark's figures, or one FAILED row saying why; never raises."""
    try:
        return await asyncio.wait_for(go(), limit)
    except TimeoutError as e:
        return [Figure.failure(f"bench.{name}", TimeoutError(f"not done in {limit:g} s {e}"))]
    except Exception as e:
        return [Figure.failure(f"bench.{name}", e)]


def _size_label(argv: Sequence[str]) -> str:
    """`--kernels 50000 --agents 5000` as `50,000 kernels / 5,000 agents`."""
    pairs = zip(argv[::2], argv[1::2], strict=False)
    return " / ".join(
        f"{int(v):,} {k.lstrip('-')}" if v.isdigit() else f"{k} {v}" for k, v in pairs
    )


def _labelled(name: str, argv: Sequence[str], figures: list[Figure]) -> list[Figure]:
    """A benchmark run at several sizes: its side rows (`terminate: ...`) name their size."""
    label = _size_label(argv)
    return [
        dataclasses.replace(f, name=f"{f.name} ({label})") if f.name.startswith(f"{name}:") else f
        for f in figures
    ]


async def one_run(mode: str, sizes: Sizes) -> list[Figure]:
    """Every benchmark once at `sizes`; a failure is a row, never an abort."""
    runners: dict[str, Callable[[argparse.Namespace], Awaitable[list[Figure]]]] = {
        "terminate": terminate.run,
        "sweep": sweep.run,
        "launch": launch.run,
    }
    parsers = {"terminate": terminate.parse_args, "sweep": sweep.parse_args}
    parsers["launch"] = launch.parse_args
    figures: list[Figure] = []
    for name, runner in runners.items():
        for argv in sizes[name]:
            args = parsers[name](argv)
            got = await _one(name, functools.partial(runner, args), LIMIT_SEC[mode])
            if len(sizes[name]) > 1:
                got = _labelled(name, argv, got)
            print_figures(f"bench.{name} {' '.join(argv)}", got)
            figures += got
    if mode != "smoke":  # workers killed and started again: tens of seconds whatever the size
        figures += await _one("recovery", recovery.figures, LIMIT_SEC[mode])
    for argv in sizes["rpc"]:
        got = await _one("rpc", functools.partial(rpc_figures, argv), LIMIT_SEC[mode])
        print_figures("bench.rpc", got)
        figures += got
    return figures


def medians(runs: Sequence[Sequence[Figure]]) -> list[Figure]:
    """One row per figure: the median over the runs that measured it, each run's value in
    the note; a FAILED row stays, saying in which runs."""
    names = list(dict.fromkeys(f.name for run in runs for f in run))
    out: list[Figure] = []
    for name in names:
        seen = [(i, f) for i, run in enumerate(runs, 1) for f in run if f.name == name]
        if seen[0][1].failed:
            which = ", ".join(str(i) for i, _ in seen)
            first = seen[0][1]
            out.append(
                dataclasses.replace(first, note=f"in run(s) {which} of {len(runs)}: {first.note}")
            )
            continue
        ours = [f.ours for _, f in seen]
        middle = sorted(seen, key=lambda pair: pair[1].ours)[len(seen) // 2][1]
        per_run = "; ".join(f"run {i}: {f.ours:,.3f} / {f.baseline:,.3f}" for i, f in seen)
        note = f"median of {len(seen)} run(s) ({per_run})"
        out.append(
            dataclasses.replace(
                middle,
                ours=statistics.median(ours),
                baseline=statistics.median(f.baseline for _, f in seen),
                note=f"{note}; {middle.note}" if middle.note else note,
            )
        )
    return out


async def main(mode: str, runs: int = 1) -> int:
    sizes = {"full": FULL, "quick": QUICK, "smoke": SMOKE}[mode]
    began = time.monotonic()
    host = machine()
    print(f"bench.all ({mode} sizes, {runs} run(s)) on {host}; {load_average()}")
    measured: list[list[Figure]] = []
    for n in range(1, runs + 1):
        if runs > 1:
            print(f"\nrun {n} of {runs}; {load_average()}")
        measured.append(await one_run(mode, sizes))
    figures = medians(measured) if runs > 1 else measured[0]
    failed = [f.name for f in figures if f.failed]
    print(f"\n{len(figures)} rows, {len(failed)} failed; at the end: {load_average()}")
    if mode != "smoke":
        RESULTS.write_text(render(figures, mode, time.monotonic() - began, host, runs))
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--full", action="store_true", help="the sizes of the targets")
    sizes.add_argument("--smoke", action="store_true", help="tiny sizes, seconds; writes nothing")
    parser.add_argument(
        "--runs", type=int, default=1, help="run everything N times, write the medians"
    )
    parsed = parser.parse_args()
    if parsed.runs < 1:
        parser.error(f"--runs must be at least 1, not {parsed.runs}")
    mode = "full" if parsed.full else "smoke" if parsed.smoke else "quick"
    raise SystemExit(asyncio.run(main(mode, parsed.runs)))
