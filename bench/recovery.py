"""Recovery from a whole-worker crash: kill -> every kernel TERMINATED, beside the same work
done without a crash.

Baseline: a terminate run of K kernels over N agents, timed from the request until every
kernel is TERMINATED, without a crash. Restart: the same work, the worker's whole process
group SIGKILLed once a share of the kernels is TERMINATED and started again at once under
the same node name, with beat running and default settings; timed from the restart (and
from the kill) until every kernel is TERMINATED. Takeover: two worker nodes run, one is
killed as soon as it holds a batch and is not restarted; timed from the kill. The
killed run is abandoned once its worker is known gone (sokovan.scheduler.leases) and the
next run re-plans only what the database says is left. Each round counts the kernels by
its own runs: every kernel must be counted once.

    python -m bench.recovery [--kernels 500] [--agents 5] [--latency-ms 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import redis as sync_redis

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
from sokovan.scheduler.claims import alive_key, run_holders_key
from sokovan.types import KernelStatus, RunId, SessionStatus
from tests.outages import celery_beat
from tests.workers import WorkerProcess, celery_worker

HANDLER = "terminate_sessions"
CONCURRENCY = 2


@dataclass(frozen=True)
class Round:
    """One crash round: seconds from the kill (and the restart) to all TERMINATED."""

    from_kill: float
    from_restart: float | None
    left_at_kill: int
    counted: int
    runs: int


def _start(st: Stack) -> None:
    st.app.send_task("sokovan.handler.run", kwargs={"handler": HANDLER, "trigger": "api"})


def _terminated(st: Stack) -> int:
    return count_kernels(st.senv.engine, KernelStatus.TERMINATED)


def _newest_run(st: Stack) -> int:
    runs = st.ledger.list_runs(HANDLER, limit=1)
    return int(runs[0].id) if runs else 0


def _counted(st: Stack, after: int) -> tuple[int, int]:
    """Kernels counted destroyed by the runs after `after` (each must be once), and runs."""
    ok: Counter[str] = Counter()
    runs = [r for r in st.ledger.list_runs(HANDLER, limit=1000) if int(r.id) > after]
    for run in runs:
        ok.update(i.item_id for i in st.ledger.items(RunId(run.id)) if i.ok and i.counted)
    twice = [k for k, n in ok.items() if n > 1]
    if twice:
        raise RuntimeError(f"{len(twice)} kernel(s) counted more than once, e.g. {twice[0]}")
    return len(ok), len(runs)


def _holding_batches(st: Stack, after: int, nodes: list[str]) -> list[str]:
    """The nodes among `nodes` that hold an agent batch of the run started after `after`:
    read from the counts the workers keep on receipt (tasks.nodes), not from their logs."""
    run = _newest_run(st)
    if run <= after:
        return []
    client = sync_redis.Redis.from_url(st.senv.settings.redis_url)
    try:
        counts = client.hgetall(run_holders_key(run))
        holders = [
            k.decode() if isinstance(k, bytes) else k for k, v in counts.items() if int(v) > 0
        ]
        named = [client.get(alive_key(h)) for h in holders]
    finally:
        client.close()
    return [n for n in nodes if n.encode() in named]


async def _wait_closed(st: Stack, limit: float) -> None:
    await wait_until(lambda: not st.ledger.running(HANDLER), limit, what="terminate runs closed")


async def without_crash(st: Stack, total: int, limit: float) -> tuple[float, int]:
    """Seconds from the request until every kernel is TERMINATED; kernels counted."""
    before = _newest_run(st)
    with celery_worker(st.senv, concurrency=CONCURRENCY):
        began = time.monotonic()
        _start(st)
        ended = await wait_until(lambda: _terminated(st) == total, limit, what="all TERMINATED")
        await _wait_closed(st, limit)
    return ended - began, _counted(st, before)[0]


@contextmanager
def _node(st: Stack, name: str) -> Iterator[WorkerProcess]:
    with celery_worker(st.senv, concurrency=CONCURRENCY, node=name) as worker:
        yield worker


async def with_crash(st: Stack, total: int, kill_at: float, limit: float, mode: str) -> Round:
    """Kills a worker mid-run; restarts it under its name, or lets a second node go on."""
    before = _newest_run(st)
    names = [f"bench-{uuid.uuid4().hex[:6]}@localhost"]
    if mode == "takeover":
        names.append(f"bench-{uuid.uuid4().hex[:6]}@localhost")
    with ExitStack() as stack_:
        stack_.enter_context(celery_beat(st.senv))
        workers = {
            name: stack_.enter_context(celery_worker(st.senv, concurrency=CONCURRENCY, node=name))
            for name in names
        }
        _start(st)
        # The worker killed is one that holds a batch (killed empty-handed, it would lose
        # nothing): alone, once a share of the kernels is done; beside another node, as soon
        # as it holds one, as waiting for a share may let the two nodes finish everything.
        share = int(total * kill_at) if mode == "restart" else 0

        found: list[str] = []

        def holding() -> bool:
            if _terminated(st) >= share:
                found.extend(_holding_batches(st, before, list(workers)))
            return bool(found)

        await wait_until(
            holding, limit, interval=0.01, what="kernels TERMINATED while a worker holds a batch"
        )
        doomed_name = found[0]
        doomed = workers[doomed_name]
        killed = time.monotonic()
        os.killpg(doomed.proc.pid, signal.SIGKILL)
        doomed.proc.wait(10)
        left = total - _terminated(st)
        restarted = None
        if mode == "restart":
            restarted = time.monotonic()
            stack_.enter_context(_node(st, doomed_name))
        ended = await wait_until(lambda: _terminated(st) == total, limit, what="all TERMINATED")
        await _wait_closed(st, limit)
    counted, runs = _counted(st, before)
    since_restart = None if restarted is None else ended - restarted
    return Round(ended - killed, since_restart, left, counted, runs)


def _crash_figure(label: str, mode: str, got: Round, base: float, total: int) -> Figure:
    ours = got.from_restart if got.from_restart is not None else got.from_kill
    when = "restart" if mode == "restart" else "kill"
    note = (
        f"whole worker SIGKILLed with {got.left_at_kill} kernels left; "
        + (
            f"restarted at once under its node name; kill -> all TERMINATED {got.from_kill:.2f} s; "
            if mode == "restart"
            else "killed as soon as it held a batch, a second worker node running all along, "
            "no restart; "
        )
        + f"{got.runs} run(s) counted {got.counted} of {total} kernels, each once; "
        f"baseline is the same terminate run without a crash, request -> all TERMINATED"
    )
    if got.counted != total:
        note = f"COUNTED {got.counted}, NOT {total}; " + note
    return Figure(f"{label}: {when} -> all TERMINATED", ours, base, "s", note=note)


async def run(args: argparse.Namespace) -> list[Figure]:
    """The baseline and both crash rounds on the same agents; a failed round is a row."""
    latency = {"destroy_kernel": args.latency_ms / 1000}
    label = f"recovery {args.kernels:,} kernels / {args.agents} agents, {args.latency_ms:g} ms"
    figures: list[Figure] = []
    async with stack(agents=args.agents, latency=latency, with_worker=False) as st:
        bulk_sessions(
            st.senv.engine,
            st.agent_ids,
            args.kernels,
            SessionStatus.TERMINATING,
            KernelStatus.TERMINATING,
        )
        try:
            base, counted = await without_crash(st, args.kernels, args.timeout)
        except Exception as e:
            return [Figure.failure(f"{label}: baseline", e)]
        if counted != args.kernels:
            note = f"the baseline counted {counted} of {args.kernels} kernels"
            return [Figure.failure(f"{label}: baseline", RuntimeError(note))]
        for mode in ("restart", "takeover"):
            set_statuses(st.senv.engine, SessionStatus.TERMINATING, KernelStatus.TERMINATING)
            try:
                got = await with_crash(st, args.kernels, args.kill_at, args.timeout, mode)
            except Exception as e:
                figures.append(Figure.failure(f"{label}: {mode}", e))
                continue
            figures.append(_crash_figure(label, mode, got, base, args.kernels))
    return figures


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
