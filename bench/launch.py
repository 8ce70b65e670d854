"""Many one-kernel sessions submitted at once: submit -> RUNNING through Celery, beside asyncio.

Ours: `sokovan.session.create` sent for every session as fast as this process can send,
then pull (one check_and_pull per agent) and start (create_kernels) on a real worker;
latency is each session's RUNNING time in the database minus the moment it was sent.
Baseline, same agents and client: in this process, the per-session work of Backend.AI's
asyncio launcher: one check_and_pull per agent, then per session one cluster SSH keypair
(RSA-2048, made on the event loop as the original does) and one create_kernels, all
sessions at once in one gather (no database, no broker). The same calls without the
keypairs are measured too and printed as a note.

    python -m bench.launch [--sessions 1000] [--agents 20] [--latency-ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import time
import uuid
from collections.abc import Sequence
from datetime import datetime

import psutil
import sqlalchemy as sa

from bench.harness import (
    IMAGE,
    Figure,
    RssSampler,
    Stack,
    commandstats,
    count_sessions,
    lost_note,
    machine,
    mib,
    print_figures,
    stack,
    stats_delta,
    timeout_split,
    wait_until,
)
from sokovan.bootstrap import build_agent_pool
from sokovan.constants import AGENT_CALL_TIMEOUT_SEC
from sokovan.db.schema import sessions
from sokovan.ports import AgentClientPool
from sokovan.scheduler.launcher.keys import generate_cluster_ssh_keypair
from sokovan.types import AgentId, ImageConfig, KernelId, SessionId, SessionStatus

FAILED = (SessionStatus.TERMINATING, SessionStatus.TERMINATED, SessionStatus.ERROR)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _running_at(st: Stack, prefix: str) -> dict[str, float]:
    """RUNNING sessions named `prefix*` and the unix time they became RUNNING."""
    with st.senv.engine.connect() as conn:
        rows = conn.execute(
            sa.select(sessions.c.name, sessions.c.status_changed_at).where(
                sessions.c.name.like(f"{prefix}%"),
                sessions.c.status == str(SessionStatus.RUNNING),
            )
        )
        return {str(name): at.timestamp() for name, at in rows}


def _count(st: Stack, prefix: str, statuses: Sequence[SessionStatus]) -> int:
    with st.senv.engine.connect() as conn:
        query = (
            sa.select(sa.func.count())
            .select_from(sessions)
            .where(
                sessions.c.name.like(f"{prefix}%"),
                sessions.c.status.in_([str(s) for s in statuses]),
            )
        )
        return int(conn.execute(query).scalar() or 0)


def _cpu_seconds(st: Stack) -> dict[str, float]:
    """CPU seconds used so far by the worker's processes, the agents and this process."""
    out: dict[str, float] = {}
    procs = {"agents": st.agents.proc.pid, "bench": os.getpid()}
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


def _print_runs(st: Stack, since: float) -> None:
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


async def ours(
    st: Stack, count: int, prefix: str, limit: float, *, timeline: bool = False
) -> dict[str, float]:
    """Sends every create at once; waits until all are RUNNING; latencies from the database."""
    assert st.worker is not None
    before = commandstats(st.redis_url)
    cpu_before = _cpu_seconds(st)
    sent: dict[str, float] = {}
    with RssSampler(st.worker.proc.pid) as rss:
        for i in range(count):
            name = f"{prefix}{i}"
            sent[name] = time.time()
            st.app.send_task(
                "sokovan.session.create", kwargs={"request": {"image": IMAGE, "name": name}}
            )
        sending = time.time() - min(sent.values())

        def settled() -> bool:
            return _count(st, prefix, [SessionStatus.RUNNING, *FAILED]) >= count

        # What did not settle in time is counted as lost below.
        with contextlib.suppress(TimeoutError):
            await wait_until(settled, limit, interval=0.2, what="every session settled")
    delta = stats_delta(before, commandstats(st.redis_url))
    running = _running_at(st, prefix)
    failed = _count(st, prefix, FAILED)
    if timeline:
        _print_runs(st, min(sent.values()))
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in _cpu_seconds(st).items()}
        print("  CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    latencies = [running[name] - sent[name] for name in sent if name in running]
    span = max(running.values(), default=time.time()) - min(sent.values())
    return {
        "rate": len(running) / span if span > 0 else float("nan"),
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "lost": count - len(running),
        "failed": failed,
        "sending": sending,
        "tasks": delta.get("lpush", 0),
        "rss": rss.peak,
        "rss_process": rss.peak_process,
    }


async def baseline(
    pool: AgentClientPool, agents: Sequence[AgentId], count: int, *, keys: bool = True
) -> dict[str, float]:
    """check_and_pull per agent, then keypair + create_kernels per session, one gather each."""
    image = ImageConfig(canonical=IMAGE)
    config = {"image": {"canonical": IMAGE}, "environ": {}, "resource_slots": {"cpu": "1"}}
    began = time.monotonic()

    async def pull(agent: AgentId) -> None:
        async with pool.acquire(agent) as client:
            await client.check_and_pull({IMAGE: image})

    async def create(i: int) -> float | str:
        agent, kernel = agents[i % len(agents)], KernelId(uuid.uuid4())
        try:
            # The original makes the keypair synchronously, on the loop, for every session.
            keypair = generate_cluster_ssh_keypair().to_agent() if keys else None
            cluster_info = {"ssh_keypair": keypair} if keypair else {}
            async with pool.acquire(agent) as client:
                await client.create_kernels(
                    SessionId(uuid.uuid4()), [kernel], [config], cluster_info, {kernel: image}
                )
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return time.monotonic() - began

    await asyncio.gather(*(pull(a) for a in agents), return_exceptions=True)
    results = await asyncio.gather(*(create(i) for i in range(count)))
    span = time.monotonic() - began
    latencies = [r for r in results if isinstance(r, float)]
    timeouts, other = timeout_split([r for r in results if isinstance(r, str)])
    return {
        "rate": len(latencies) / span,
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "lost": count - len(latencies),
        "timeouts": timeouts,
        "other": other,
    }


async def run(args: argparse.Namespace) -> list[Figure]:
    """A warm-up batch on each side, then the timed batch on each side."""
    latency = {"create_kernels": args.latency_ms / 1000}
    async with stack(
        agents=args.agents,
        latency=latency,
        worker_concurrency=args.concurrency,
        settings={"agent_call_timeout": str(args.call_timeout)},
    ) as st:
        # The baseline's loop is busy making keys, so it reads replies late: with the
        # product's call timeout it loses calls, and the losses are printed.
        pool = build_agent_pool(st.senv.settings, st.repo)
        try:
            # Warm-up: images land on every agent, clients connect on both sides.
            await ours(st, args.agents, "warm-", args.timeout)
            await baseline(pool, st.agent_ids, args.agents)
            mine = await ours(st, args.sessions, "timed-", args.timeout, timeline=args.runs)
            base = await baseline(pool, st.agent_ids, args.sessions)
            bare = await baseline(pool, st.agent_ids, args.sessions, keys=False)
        finally:
            await pool.close_all()
        running = count_sessions(st.senv.engine, SessionStatus.RUNNING)
    label = f"launch {args.sessions:,} sessions / {args.agents} agents, {args.latency_ms:g} ms"
    note = (
        f"{_losses('ours', mine, args)}; {_losses('baseline', base, args)}; "
        f"{_losses('no-keypair baseline', bare, args)}; "
        f"{running} RUNNING; sending took {mine['sending']:.2f} s; tasks sent {mine['tasks']:.0f}; "
        f"worker peak RSS {mib(mine['rss']):.0f} MiB tree, "
        f"{mib(mine['rss_process']):.0f} MiB largest process; baseline = keypair + "
        f"create_kernels per session as Backend.AI does; without keypairs the baseline's "
        f"p50/p99 are {bare['p50']:.2f}/{bare['p99']:.2f} s ({bare['rate']:.0f} sessions/s)"
    )
    return [
        Figure(
            f"{label}: sessions/s", mine["rate"], base["rate"], "1/s", better="higher", note=note
        ),
        Figure("launch: p50 submit -> RUNNING", mine["p50"], base["p50"], "s"),
        Figure("launch: p99 submit -> RUNNING", mine["p99"], base["p99"], "s"),
    ]


def _losses(side: str, got: dict[str, float], args: argparse.Namespace) -> str:
    """How many sessions one side did not get RUNNING, and to what."""
    if "failed" in got:  # ours: sessions failed, or not RUNNING within the bound
        late = got["lost"] - got["failed"]
        why = f"({got['failed']:.0f} failed, {late:.0f} not RUNNING within {args.timeout:g} s)"
        return lost_note(side, int(got["lost"]), args.sessions, "sessions", why)
    why = f"({got['timeouts']:.0f} to the {args.call_timeout:g} s call timeout, "
    why += f"{got['other']:.0f} to other errors)"
    return lost_note(side, int(got["lost"]), args.sessions, "create calls", why)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=10.0, help="create_kernels delay")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    parser.add_argument("--timeout", type=float, default=900.0, help="bound of one burst")
    parser.add_argument(
        "--call-timeout",
        type=float,
        default=AGENT_CALL_TIMEOUT_SEC,
        help="seconds per agent call on both sides (the product's default)",
    )
    parser.add_argument("--runs", action="store_true", help="print the timed batch's runs")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    figures = asyncio.run(run(args))
    print_figures(f"bench.launch on {machine()}", figures)


if __name__ == "__main__":
    main()
