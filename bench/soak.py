"""Chaos soak (SC-CV-007): a mixed workload while, at random 20-40 s intervals, the worker
tree, beat, Valkey or one agent is SIGKILLed and started again; then calm, and the invariants.

Real processes only: a Valkey the soak SIGKILLs and restarts on its port and data dir (with
an append-only file, fsync every second, as `sokovan up`'s broker keeps one; `--no-aof`
loses everything queued instead), SQLite, one reference agent per process (kernels are OS
processes that die with their agent; restarted with its id and port), a Celery worker
(whole process group killed) and celery beat. The workload creates sessions (one kernel,
or 2-3 multi-node), terminates some and SIGKILLs kernel processes behind the scheduler's
back. After the last fault no new work is sent; the invariants are read every 2 s until
they all hold (time to settle) or `--calm` seconds have passed since the last fault, then
a new session must reach RUNNING. Failures are printed as FAILED rows; the soak exits 0
whenever it could run.

    python -m bench.soak [--minutes 10] [--seed 1] [--agents 3] [--calm 60] [--no-aof]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from bench.chaos.invariants import Check, check_all
from bench.chaos.results import SoakOptions, SoakResult, print_report
from bench.chaos.rig import FAULT_KINDS, ChaosCluster, Fault, chaos_cluster
from bench.chaos.workload import Client, Workload
from tasks.app import create_app

CHECK_EVERY = 2.0
PROBE_WITHIN = 30.0


# How often the soak plays supervisor for the worker and beat (see ChaosCluster.revive).
SUPERVISE_EVERY = 2.0


def fault_plan(options: SoakOptions, rng: random.Random) -> list[tuple[float, str]]:
    """(seconds from the start, kind): the given order, else shuffled rounds of every kind."""
    plan: list[tuple[float, str]] = []
    at = 0.0
    if options.faults is not None:
        for kind in options.faults:
            at += rng.uniform(*options.gap)
            plan.append((at, kind))
        return plan
    rounds: list[str] = []
    while True:
        at += rng.uniform(*options.gap)
        if at > options.minutes * 60:
            return plan
        if not rounds:
            rounds = list(FAULT_KINDS)
            rng.shuffle(rounds)
        plan.append((at, rounds.pop()))


async def soak(options: SoakOptions) -> SoakResult:
    """Runs the whole soak on a cluster of its own under a temporary (or `keep`) directory."""
    root = options.keep or Path(tempfile.mkdtemp(prefix="sokovan-soak-"))
    try:
        async with chaos_cluster(root, options.agents, options.append_only) as cluster:
            result = await _soak_on(cluster, options)
    finally:
        if options.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    result.root = options.keep
    return result


async def _soak_on(cluster: ChaosCluster, options: SoakOptions) -> SoakResult:
    rng = random.Random(options.seed)
    client = Client(create_app(cluster.env.settings))
    load = Workload(cluster, client, rng, every=options.every, cap=options.cap)
    stop_load, stop_track = asyncio.Event(), asyncio.Event()
    tracker = asyncio.create_task(load.track(stop_track))
    loader = asyncio.create_task(load.run(stop_load))
    supervisor = asyncio.create_task(_supervise(cluster, stop_track))
    began = time.monotonic()
    faults: list[Fault] = []
    try:
        for at, kind in fault_plan(options, rng):
            await asyncio.sleep(max(0.0, began + at - time.monotonic()))
            target = cluster.next_agent() if kind == "agent" else None
            if target is not None:
                await asyncio.to_thread(load.agent_dies, target)
            faults.append(await cluster.inject(kind, target))
        stop_load.set()
        chaos = time.monotonic() - began
        last = faults[-1].killed_at if faults else time.monotonic()
        settle, checks = await _settle(cluster, load, loader, last + options.calm, last)
        tracked = list(load.tracked)
        checks.append(await _probe(load))
    finally:
        stop_load.set()
        stop_track.set()
        await asyncio.gather(loader, tracker, supervisor, return_exceptions=True)
        client.close()
    killed, lost = len(load.killed), len(load.lost)
    return SoakResult(options, checks, faults, tracked, killed, lost, chaos, began, settle)


async def _supervise(cluster: ChaosCluster, stop: asyncio.Event) -> None:
    """Restarts a worker or beat that exited on its own, as a process supervisor would."""
    while not stop.is_set():
        await asyncio.to_thread(cluster.revive)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SUPERVISE_EVERY)


async def _settle(
    cluster: ChaosCluster,
    load: Workload,
    loader: asyncio.Task[None],
    deadline: float,
    last: float,
) -> tuple[float | None, list[Check]]:
    """Reads the invariants until they all hold (and no request is still out) or `deadline`."""
    while True:
        try:
            checks = await asyncio.to_thread(check_all, cluster, load.tracked)
        except Exception as e:  # e.g. SQLite busy: a failed row, and the next look
            checks = [Check("invariants readable", False, f"{type(e).__name__}: {e}"[:300])]
        now = time.monotonic()
        if loader.done() and all(c.ok for c in checks):
            return now - last, checks
        if now >= deadline:
            return None, checks
        await asyncio.sleep(min(CHECK_EVERY, max(0.0, deadline - now)))


async def _probe(load: Workload) -> Check:
    """A new session after the calm: it must reach RUNNING."""
    name = "a new session reaches RUNNING"
    t = await load.create(1)
    if not t.acked:
        return Check(name, False, f"create not acknowledged: {t.answer}")
    deadline = time.monotonic() + PROBE_WITHIN
    # The tracker notes RUNNING; nothing else to wake on.
    while t.running_at is None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    if t.running_at is None:
        return Check(
            name, False, f"not RUNNING {PROBE_WITHIN:g} s after its request", t.session_id or ""
        )
    return Check(name, True, f"RUNNING {t.running_at - t.requested_at:.1f} s after its request")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the chaos phase")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument(
        "--calm", type=float, default=60.0, help="seconds to settle after the last fault"
    )
    parser.add_argument("--every", type=float, default=1.5, help="seconds between operations")
    parser.add_argument("--no-aof", action="store_true", help="Valkey without an append-only file")
    parser.add_argument(
        "--faults", default="", help="a fixed order instead, e.g. worker,beat,valkey,agent"
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep logs and data in this directory"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = SoakOptions(
        minutes=args.minutes,
        seed=args.seed,
        agents=args.agents,
        calm=args.calm,
        every=args.every,
        append_only=not args.no_aof,
        keep=args.keep,
        faults=tuple(args.faults.split(",")) if args.faults else None,
    )
    try:
        result = asyncio.run(soak(options))
    # The soak could not run at all (pytest's Failed: an agent harness gave up): exit 1.
    except (Exception, pytest.fail.Exception) as e:
        print(f"SC-CV-007 chaos soak: FAILED: could not run: {type(e).__name__}: {e}")
        return 1
    print_report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
