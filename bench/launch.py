"""Many one-kernel sessions submitted at once: submit -> RUNNING through Celery, beside asyncio.

Ours: one `sokovan.sessions.create` carrying every session, then pull (one check_and_pull
per agent) and start (one create_kernels task per agent and run) on a real worker; latency
is each session's RUNNING time in the database minus the moment it was sent. With a warm
keypair pool (filled by the workers before the burst, as after idle time), with a cold one
(emptied just before: every key made on demand), and with a warm pool but one
`sokovan.session.create` per session. Baseline, same agents and client: in this process,
the per-session work of Backend.AI's asyncio launcher: one check_and_pull per agent, then
per session one cluster SSH keypair (RSA-2048, made on the event loop as the original
does) and one create_kernels, all at once in one gather (no database, no broker); and the
same calls without the keypairs.

    python -m bench.launch [--sessions 1000] [--agents 20] [--latency-ms 10] [--pool-size N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence

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
from bench.timeline import cpu_seconds, print_runs
from sokovan.bootstrap import build_agent_pool
from sokovan.constants import AGENT_CALL_TIMEOUT_SEC, WORKER_CONCURRENCY
from sokovan.db.offload import OffloadedStore
from sokovan.db.schema import keypair_pool, sessions
from sokovan.ports import AgentClientPool
from sokovan.scheduler.launcher.keys import generate_cluster_ssh_keypair
from sokovan.types import AgentId, ImageConfig, KernelId, SessionId, SessionStatus
from tasks.names import KEYPAIRS_REFILL, SESSION_CREATE, SESSIONS_CREATE

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


def _send(st: Stack, count: int, prefix: str, batch: bool) -> dict[str, float]:
    """Submits the sessions, in one message or one per session; when each was sent."""
    names = [f"{prefix}{i}" for i in range(count)]
    if batch:
        at = time.time()
        requests = [{"image": IMAGE, "name": name} for name in names]
        st.app.send_task(SESSIONS_CREATE, kwargs={"requests": requests})
        return dict.fromkeys(names, at)
    sent: dict[str, float] = {}
    for name in names:
        sent[name] = time.time()
        st.app.send_task(SESSION_CREATE, kwargs={"request": {"image": IMAGE, "name": name}})
    return sent


async def ours(
    st: Stack,
    count: int,
    prefix: str,
    limit: float,
    *,
    batch: bool = True,
    timeline: bool = False,
) -> dict[str, float]:
    """Submits every session at once; waits until all are RUNNING; latencies from the database."""
    assert st.worker is not None
    before = commandstats(st.redis_url)
    cpu_before = cpu_seconds(st)
    with RssSampler(st.worker.proc.pid) as rss:
        sent = _send(st, count, prefix, batch)
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
        print_runs(st, min(sent.values()))
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_seconds(st).items()}
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


def _pooled(st: Stack) -> int:
    with st.senv.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(keypair_pool)).scalar() or 0)


async def fill_pool(st: Stack, target: int, limit: float) -> float:
    """Asks the workers for refills, as beat would, until the pool holds `target`; seconds."""
    began = time.monotonic()
    while _pooled(st) < target:
        if time.monotonic() - began > limit:
            raise TimeoutError(f"the keypair pool did not reach {target} in {limit:g} s")
        st.app.send_task(KEYPAIRS_REFILL)
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: _pooled(st) >= target, 5.0, interval=0.2)
    return time.monotonic() - began


def drain_pool(st: Stack) -> None:
    with st.senv.engine.begin() as conn:
        conn.execute(keypair_pool.delete())


async def run(args: argparse.Namespace) -> list[Figure]:
    """Warm-ups, the baselines, then our burst with a warm pool and with a cold one."""
    latency = {"create_kernels": args.latency_ms / 1000}
    target = args.pool_size or args.sessions
    settings = {"agent_call_timeout": str(args.call_timeout), "keypair_pool_size": str(target)}
    async with stack(
        agents=args.agents, latency=latency, worker_concurrency=args.concurrency, settings=settings
    ) as st:
        # The baseline's loop is busy making keys, so it reads replies late: with the
        # product's call timeout it loses calls, and the losses are printed.
        pool = build_agent_pool(st.senv.settings, OffloadedStore(st.repo))
        # Its own clients: agents the keypair baseline timed out on are not held against it.
        bare_pool = build_agent_pool(st.senv.settings, OffloadedStore(st.repo))
        try:
            # Warm-up: images land on every agent, clients connect on both sides.
            await ours(st, args.agents, "warm-", args.timeout)
            fill = await fill_pool(st, target, args.timeout)
            await baseline(pool, st.agent_ids, args.agents)
            await baseline(bare_pool, st.agent_ids, args.agents, keys=False)
            base = await baseline(pool, st.agent_ids, args.sessions)
            bare = await baseline(bare_pool, st.agent_ids, args.sessions, keys=False)
            warm = await ours(st, args.sessions, "hot-", args.timeout)
            await fill_pool(st, target, args.timeout)  # idle time after the burst
            each = await ours(st, args.sessions, "each-", args.timeout, batch=False)
            await fill_pool(st, target, args.timeout)
            drain_pool(st)
            cold = await ours(st, args.sessions, "cold-", args.timeout, timeline=args.runs)
        finally:
            await pool.close_all()
            await bare_pool.close_all()
        running = count_sessions(st.senv.engine, SessionStatus.RUNNING)
    return _figures(args, warm, cold, each, base, bare, fill, running, target)


def _figures(
    args: argparse.Namespace,
    warm: dict[str, float],
    cold: dict[str, float],
    each: dict[str, float],
    base: dict[str, float],
    bare: dict[str, float],
    fill: float,
    running: int,
    target: int,
) -> list[Figure]:
    label = f"launch {args.sessions:,} sessions / {args.agents} agents, {args.latency_ms:g} ms"
    note = (
        f"{_losses('ours (warm pool)', warm, args)}; {_losses('ours (cold pool)', cold, args)}; "
        f"{_losses('ours (warm pool, one message per session)', each, args)}; "
        f"{_losses('baseline', base, args)}; {_losses('no-keypair baseline', bare, args)}; "
        f"{running} RUNNING; a pool of {target} keys filled in {fill:.1f} s by the workers; "
        f"tasks sent for one submission of {args.sessions}: {warm['tasks']:.0f} (warm), "
        f"{cold['tasks']:.0f} (cold), {each['tasks']:.0f} with one message per session; "
        f"sending took "
        f"{warm['sending']:.2f} s; worker peak RSS {mib(warm['rss']):.0f} MiB tree, "
        f"{mib(warm['rss_process']):.0f} MiB largest process; baseline = keypair + "
        f"create_kernels per session as Backend.AI does; without keypairs the baseline's "
        f"p50/p99 are {bare['p50']:.2f}/{bare['p99']:.2f} s ({bare['rate']:.0f} sessions/s)"
    )
    return [
        Figure(
            f"{label}: sessions/s, warm pool",
            warm["rate"],
            base["rate"],
            "1/s",
            better="higher",
            note=note,
        ),
        Figure("launch: p50 submit -> RUNNING, warm pool", warm["p50"], base["p50"], "s"),
        Figure("launch: p99 submit -> RUNNING, warm pool", warm["p99"], base["p99"], "s"),
        Figure("launch: p50 submit -> RUNNING, cold pool", cold["p50"], base["p50"], "s"),
        Figure("launch: p99 submit -> RUNNING, cold pool", cold["p99"], base["p99"], "s"),
        Figure("launch: p99 warm pool / no-keypair baseline", warm["p99"], bare["p99"], "s"),
        Figure("launch: p99 warm pool, one message per session", each["p99"], base["p99"], "s"),
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
    parser.add_argument(
        "--concurrency", type=int, default=WORKER_CONCURRENCY, help="worker processes"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="bound of one burst")
    parser.add_argument(
        "--call-timeout",
        type=float,
        default=AGENT_CALL_TIMEOUT_SEC,
        help="seconds per agent call on both sides (the product's default)",
    )
    parser.add_argument("--runs", action="store_true", help="print the cold burst's runs")
    parser.add_argument(
        "--pool-size", type=int, default=0, help="keypair pool target (default: --sessions)"
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    figures = asyncio.run(run(args))
    print_figures(f"bench.launch on {machine()}", figures)


if __name__ == "__main__":
    main()
