"""Every benchmark at sizes that finish in a few minutes; writes bench/results.md.

    python -m bench.all [--full]

`--full` uses the sizes of the performance targets (10,000 kernels, 100,000 kernels,
1,000 sessions); expect several minutes more.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench import launch, rpc, sweep, terminate
from bench.harness import Figure, machine, print_figures

RESULTS = Path(__file__).with_name("results.md")

QUICK = {
    "terminate": ["--kernels", "2000", "--agents", "100"],
    "sweep": ["--kernels", "20000", "--agents", "100"],
    "launch": ["--sessions", "200", "--agents", "20"],
}
FULL = {
    "terminate": ["--kernels", "10000", "--agents", "100"],
    "sweep": ["--kernels", "100000", "--agents", "100"],
    "launch": ["--sessions", "1000", "--agents", "20"],
}


async def rpc_figures() -> list[Figure]:
    args = argparse.Namespace(sequential=1000, concurrent=2000, concurrency=100, addr="")
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
    lines += ["", f"Machine at the end: {machine()}.", ""]
    return "\n".join(lines)


async def main(full: bool) -> None:
    sizes = FULL if full else QUICK
    began = time.monotonic()
    host = machine()
    figures: list[Figure] = []
    for name, module in (("terminate", terminate), ("sweep", sweep), ("launch", launch)):
        args = module.parse_args(sizes[name])
        got = await module.run(args)
        print_figures(f"bench.{name}", got)
        figures += got
    got = await rpc_figures()
    print_figures("bench.rpc", got)
    figures += got
    RESULTS.write_text(render(figures, "full" if full else "quick", time.monotonic() - began, host))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the sizes of the targets")
    asyncio.run(main(parser.parse_args().full))
