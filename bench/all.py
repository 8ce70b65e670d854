"""Every benchmark at sizes that finish in a few minutes; writes bench/results.md.

    python -m bench.all [--full | --smoke]

`--full` uses the sizes of the performance targets (10,000 kernels, 100,000 kernels,
1,000 sessions); expect several minutes more. `--smoke` runs every benchmark at tiny
sizes in seconds (run by `make test`, so the benchmarks cannot rot) and writes nothing.
A benchmark that raises becomes a FAILED row and the others go on; the run exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench import launch, recovery, rpc, sweep, terminate
from bench.harness import Figure, load_average, machine, print_figures

RESULTS = Path(__file__).with_name("results.md")

QUICK = {
    "terminate": ["--kernels", "2000", "--agents", "100"],
    "sweep": ["--kernels", "20000", "--agents", "100"],
    "launch": ["--sessions", "200", "--agents", "20"],
    "rpc": ["--sequential", "1000", "--concurrent", "2000"],
}
SMOKE = {
    "terminate": ["--kernels", "200", "--agents", "10"],
    "sweep": ["--kernels", "2000", "--agents", "10"],
    "launch": ["--sessions", "20", "--agents", "4"],
    "rpc": ["--sequential", "200", "--concurrent", "400"],
}
FULL = {
    "terminate": ["--kernels", "10000", "--agents", "100"],
    "sweep": ["--kernels", "100000", "--agents", "100"],
    "launch": ["--sessions", "1000", "--agents", "20"],
    "rpc": ["--sequential", "1000", "--concurrent", "2000"],
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


def render(figures: Sequence[Figure], sizes: str, seconds: float, host: str) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python -m bench.all{' --full' if sizes == 'full' else ''}` "
        f"on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {seconds:.0f} s ({sizes} sizes).",
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


async def main(mode: str) -> int:
    sizes = {"full": FULL, "quick": QUICK, "smoke": SMOKE}[mode]
    began = time.monotonic()
    host = machine()
    print(f"bench.all ({mode} sizes) on {host}; {load_average()}")
    figures: list[Figure] = []
    runners: dict[str, Callable[[argparse.Namespace], Awaitable[list[Figure]]]] = {
        "terminate": terminate.run,
        "sweep": sweep.run,
        "launch": launch.run,
    }
    parsers = {"terminate": terminate.parse_args, "sweep": sweep.parse_args}
    parsers["launch"] = launch.parse_args
    for name, runner in runners.items():
        args = parsers[name](sizes[name])
        got = await _one(name, functools.partial(runner, args), LIMIT_SEC[mode])
        print_figures(f"bench.{name}", got)
        figures += got
    if mode != "smoke":  # workers killed and started again: tens of seconds whatever the size
        figures += await _one("recovery", recovery.figures, LIMIT_SEC[mode])
    got = await _one("rpc", lambda: rpc_figures(sizes["rpc"]), LIMIT_SEC[mode])
    print_figures("bench.rpc", got)
    figures += got
    failed = [f.name for f in figures if f.failed]
    print(f"\n{len(figures)} rows, {len(failed)} failed; at the end: {load_average()}")
    if mode != "smoke":
        RESULTS.write_text(render(figures, mode, time.monotonic() - began, host))
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--full", action="store_true", help="the sizes of the targets")
    sizes.add_argument("--smoke", action="store_true", help="tiny sizes, seconds; writes nothing")
    parsed = parser.parse_args()
    raise SystemExit(
        asyncio.run(main("full" if parsed.full else "smoke" if parsed.smoke else "quick"))
    )
