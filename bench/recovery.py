"""Recovery from a whole-worker crash: kill -> every kernel TERMINATED, beside the same work
done without a crash.

Baseline: a terminate run of K kernels over N agents on one worker, timed from the request
until every kernel is TERMINATED. Ours: the same work, the worker's whole process group
SIGKILLed once a share of the kernels is TERMINATED and restarted at once, with beat running
and default settings (30 s leases, recovery every 5 s); timed from the kill until every
kernel is TERMINATED. The killed run's lease lapses, it is abandoned, and the next run
re-plans only what the database says is left.

    python -m bench.recovery [--kernels 500] [--agents 5] [--latency-ms 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from contextlib import ExitStack

from bench.harness import (
    Figure,
    Stack,
    bulk_sessions,
    count_kernels,
    machine,
    print_figures,
    set_statuses,
    stack,
    wait_until,
)
from sokovan.types import KernelStatus, SessionStatus
from tests.outages import celery_beat
from tests.workers import celery_worker

HANDLER = "terminate_sessions"


def _start(st: Stack) -> None:
    st.app.send_task("sokovan.handler.run", kwargs={"handler": HANDLER, "trigger": "api"})


def _all_terminated(st: Stack, total: int) -> bool:
    return count_kernels(st.senv.engine, KernelStatus.TERMINATED) == total


async def without_crash(st: Stack, total: int, limit: float) -> float:
    """Seconds from the request until every kernel is TERMINATED, on one worker."""
    with celery_worker(st.senv, concurrency=2):
        began = time.monotonic()
        _start(st)
        ended = await wait_until(lambda: _all_terminated(st, total), limit, what="all TERMINATED")
    return ended - began


async def with_crash(st: Stack, total: int, kill_at: float, limit: float) -> tuple[float, int]:
    """Seconds from the kill until every kernel is TERMINATED; and how many were left."""
    with ExitStack() as stack_:
        stack_.enter_context(celery_beat(st.senv))
        with celery_worker(st.senv, concurrency=2) as doomed:
            _start(st)
            share = int(total * kill_at)
            await wait_until(
                lambda: count_kernels(st.senv.engine, KernelStatus.TERMINATED) >= share,
                limit,
                interval=0.01,
                what="the first kernels TERMINATED",
            )
            killed = time.monotonic()
            os.killpg(doomed.proc.pid, signal.SIGKILL)
            doomed.proc.wait(10)
        left = total - count_kernels(st.senv.engine, KernelStatus.TERMINATED)
        stack_.enter_context(celery_worker(st.senv, concurrency=2))
        ended = await wait_until(lambda: _all_terminated(st, total), limit, what="all TERMINATED")
    return ended - killed, left


async def run(args: argparse.Namespace) -> list[Figure]:
    """Both rounds on the same agents."""
    latency = {"destroy_kernel": args.latency_ms / 1000}
    async with stack(agents=args.agents, latency=latency, with_worker=False) as st:
        bulk_sessions(
            st.senv.engine,
            st.agent_ids,
            args.kernels,
            SessionStatus.TERMINATING,
            KernelStatus.TERMINATING,
        )
        base = await without_crash(st, args.kernels, args.timeout)
        set_statuses(st.senv.engine, SessionStatus.TERMINATING, KernelStatus.TERMINATING)
        mine, left = await with_crash(st, args.kernels, args.kill_at, args.timeout)
        runs = st.ledger.list_runs(HANDLER, limit=100)
        counted = sum(r.succeeded for r in runs) - args.kernels  # the baseline round's
    if counted != args.kernels:
        raise RuntimeError(f"crash round counted {counted} kernels, not {args.kernels}")
    label = (
        f"recovery: kill -> all {args.kernels:,} TERMINATED "
        f"({args.agents} agents, {args.latency_ms:g} ms)"
    )
    note = (
        f"whole worker SIGKILLed with {left} kernels left, restarted at once; baseline is "
        f"the same terminate run without a crash, request -> all TERMINATED; "
        f"each kernel counted once ({counted})"
    )
    return [Figure(label, mine, base, "s", note=note)]


async def figures() -> list[Figure]:
    """The figures at the default sizes, printed as they come (for bench.all)."""
    got = await run(parse_args([]))
    print_figures("bench.recovery", got)
    return got


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", type=int, default=500)
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=300.0, help="destroy_kernel delay")
    parser.add_argument("--kill-at", type=float, default=0.3, help="share TERMINATED at the kill")
    parser.add_argument("--timeout", type=float, default=300.0)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    print_figures(f"bench.recovery on {machine()}", asyncio.run(run(args)))


if __name__ == "__main__":
    main()
